"""The transformer body as a witness for the hidden-dimension alignment, when the embedding is
not one: redrawn, transplanted from another tokenizer, or sharing no tokens.

Every layer's kernels (the W_q / W_k Grams, the QK circuit) are hidden x hidden in the model's
own residual basis. Each hidden dim gets a profile from them that does not depend on how the
other dims are ordered, signed or scaled: per layer, its log squared column norm and the size
of its correlations with the other columns (mean, root mean square, largest), and for the
circuit its log row and column norms and its diagonal relative to them. Profiles are
standardised per model, the few feature-space modes every dim shares are removed, and a
linear assignment pairs the dims whose profiles agree. The pairing is tested as the
embedding's is: partners found on the even layers, checked on the odd ones.

The signs of the paired dims (which the profiles cannot see) come from the kernels' entries:
the leading eigenvector of the summed entrywise agreement of the paired kernels.
"""
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from awm.method.cka import EPS
from awm.method.correspondence import CorrespondenceTest, correspondence_test

# Feature-space modes removed from each model's standardised profiles: what every dim of any
# trained model shares (larger norm goes with larger correlations, ...), not lineage.
COMMON_MODES = 2
# Fewer layers than this leave no held-out half to test on.
MIN_LAYERS = 2
SIGN_ITERATIONS = 300
# Row statistics of a profile are taken over at most this many columns (evenly spaced).
PROFILE_COLUMNS = 1024
# Layers the signs are read from: a few suffice, so finding them costs a fraction of a pass.
SIGN_LAYERS = 4


def _row_dots(a, b):
    """sum_j a[i, j] b[i, j] for every row i, without an elementwise temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1)


def _columns(hidden):
    """The columns a row's statistics are taken over: all, or an even subset of PROFILE_COLUMNS
    for wide models (the statistics are estimates either way; a subset bounds the cost)."""
    return torch.arange(0, hidden, max(1, -(-hidden // PROFILE_COLUMNS)))


def _without_diagonal(rows, columns):
    """rows[:, columns] with each row's own entry (where its column was taken) zeroed."""
    taken = rows[:, columns].clone()
    taken[columns, torch.arange(len(columns))] = 0.0
    return taken


def _gram_profile(kernel, columns):
    """Per dim of a symmetric PSD kernel: log diagonal, and the mean, RMS and largest absolute
    correlation with the other dims."""
    kernel = kernel.float()
    diagonal = kernel.diagonal().clamp_min(EPS)
    inverse = diagonal.rsqrt()
    correlation = _without_diagonal(kernel, columns).mul_(inverse[:, None]).mul_(inverse[columns][None, :]).abs_()
    others = len(columns)
    return [diagonal.log(), correlation.sum(1) / others, (_row_dots(correlation, correlation) / others).sqrt(), correlation.amax(1)]


def _circuit_profile(circuit):
    circuit = circuit.float()
    rows = circuit.square().sum(1).sqrt().clamp_min(EPS)
    cols = circuit.square().sum(0).sqrt().clamp_min(EPS)
    return [rows.log(), cols.log(), circuit.diagonal() / (rows * cols).sqrt()]


def _pattern_agreements(kernels, columns):
    """Per dim: how alike its relations to the other dims are in W_q's and W_k's Grams and the
    circuit's rows and columns, as cosines of those rows without their own entry (not centred:
    a centred row would see the signs of the other dims). A sign flip of dim j changes entry j
    of every row alike and a permutation reorders them alike, so these see neither."""
    patterns = [_without_diagonal(kernels.query.float(), columns), _without_diagonal(kernels.key.float(), columns)]
    if kernels.circuit is not None:
        circuit = kernels.circuit.float()
        patterns += [_without_diagonal(circuit, columns), _without_diagonal(circuit.t(), columns)]
    norms = [_row_dots(m, m).sqrt().clamp_min(EPS) for m in patterns]
    return [_row_dots(patterns[a], patterns[b]) / (norms[a] * norms[b])
            for a in range(len(patterns)) for b in range(a + 1, len(patterns))]


def layer_profile(kernels):
    """(hidden, features) float64 on the CPU: one layer's per-dim profile."""
    columns = _columns(kernels.query.shape[0]).to(kernels.query.device)
    parts = _gram_profile(kernels.query, columns) + _gram_profile(kernels.key, columns)
    if kernels.circuit is not None:
        parts += _circuit_profile(kernels.circuit)
    parts += _pattern_agreements(kernels, columns)
    return torch.stack(parts, dim=1).double().cpu()


def _depth_bins(profiles, bins):
    """Per-layer profiles averaged into `bins` bins of relative depth, so that models of
    different depth compare bin by bin (equal depth: one layer a bin)."""
    if len(profiles) == bins:
        return profiles
    edges = [int(round(b * len(profiles) / bins)) for b in range(bins + 1)]
    return [torch.stack(profiles[edges[b]:max(edges[b + 1], edges[b] + 1)]).mean(0) for b in range(bins)]


def _standardised(profile):
    """Columns z-scored over dims, the model's own leading feature-space modes removed, rows
    centred and scaled to unit length: a row's dot product with another model's is a correlation."""
    profile = profile - profile.mean(0)
    profile = profile / profile.std(0).clamp_min(EPS)
    modes = torch.linalg.svd(profile, full_matrices=False)[2][:COMMON_MODES]
    profile = profile - (profile @ modes.t()) @ modes
    profile = profile - profile.mean(1, keepdim=True)
    return profile / profile.norm(dim=1, keepdim=True).clamp_min(EPS)


def _similarity(target_bins, base_bins):
    target = _standardised(torch.cat(target_bins, dim=1))
    base = _standardised(torch.cat(base_bins, dim=1))
    return target @ base.t()


@dataclass
class BodyMatch:
    base_index: torch.Tensor        # base dim of each target dim
    test: CorrespondenceTest


def match_dims(target_profiles, base_profiles):
    """Pair the target's hidden dims with the base's from their per-layer profiles (lists of
    (hidden, features), one per layer) and test the pairing on held-out layers; None when the
    models have too few layers to hold any out."""
    bins = min(len(target_profiles), len(base_profiles))
    if bins < MIN_LAYERS:
        return None
    target_bins, base_bins = _depth_bins(target_profiles, bins), _depth_bins(base_profiles, bins)
    halves = [_similarity(target_bins[h::2], base_bins[h::2]) for h in (0, 1)]
    rows, cols = linear_sum_assignment(-(halves[0] + halves[1]).numpy())
    base_index = torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)
    return BodyMatch(base_index, correspondence_test(halves[0], halves[1], base_index))


class SignAgreement:
    """Sum over layers of the entrywise agreement of paired kernels, K_t[i, j] K_b[p_i, p_j]:
    its leading eigenvector has the sign pattern s with K_t ~ diag(s) K_b[p][:, p] diag(s)."""

    def __init__(self, base_index):
        self.base_index, self.total = base_index, None

    def add(self, target_kernels, base_kernels):
        for name in ("query", "key", "circuit"):
            target, base = getattr(target_kernels, name), getattr(base_kernels, name)
            if target is None or base is None:
                continue
            index = self.base_index.to(base.device)
            paired = base.index_select(0, index).index_select(1, index).double()
            product = target.double() * paired
            if name == "circuit":
                product = product + product.t()                  # not symmetric: both orders count
            product.diagonal().zero_()
            product /= product.norm().clamp_min(EPS)             # every layer and kernel counts alike
            self.total = product if self.total is None else self.total.add_(product)

    def signs(self):
        """The leading (largest, not largest in magnitude) eigenvector's signs, by power
        iteration on the matrix shifted by its norm."""
        shift = self.total.norm()
        vector = torch.ones(self.total.shape[0], dtype=torch.float64, device=self.total.device)
        for _ in range(SIGN_ITERATIONS):
            vector = self.total @ vector + shift * vector
            vector /= vector.norm().clamp_min(EPS)
        return torch.where(vector < 0, -1.0, 1.0).float().cpu()


def keep_profile(digest, index, kernels):
    """Remember layer `index`'s profile on the digest (computed once, whatever pairs ask)."""
    if index not in digest.profiles:
        digest.profiles[index] = layer_profile(kernels)


def profiles(digest):
    """The digest's per-layer profiles in layer order (every layer was seen by the first pass)."""
    return [digest.profiles[i] for i in range(digest.num_layers)]


def sign_layers(base_layers, target_layers):
    """(base layer, target layer) pairs at the same relative depth that the signs are read
    from: SIGN_LAYERS of them, spread over the depth (every layer shares the residual basis,
    and a derived body agrees with its parent in each of them)."""
    count = min(SIGN_LAYERS, target_layers)
    targets = sorted({int(round(k * (target_layers - 1) / max(1, count - 1))) for k in range(count)})
    return [(int(round(j * (base_layers - 1) / max(1, target_layers - 1))), j) for j in targets]
