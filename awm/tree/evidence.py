"""What the family tree reads from the models beyond their pair scores: the W_q / W_k rows a
digest keeps (a few layers, as stored) and every layer's Gram matrices.

Models of one shape that share their hidden basis are points in weight space: the inner
products of their rows give every distance (how far a fine-tune moved) and every linear fit
(is this model a weighted average of those, with which coefficients) without touching the rows
again. Layer by layer, Gram distances tell which parent layer each layer of a stacked or
layer-wise merged model came from.
"""
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from awm.method import cka
from awm.tree import entrywise, rounding
from awm.tree.copies import unit
from awm.witnesses.body_rows import row_layers

# A parent sits between its children: averaging k children cancels their independent changes
# and "explains" the parent to 1/sqrt(k) of the best single child's residual. A merge is taken
# only on evidence a parent cannot fake: a weighted average that leaves at most this share of the
# best single parent's residual (a linear merge: none at all) ...
LINEAR_FIT = 0.05
MIN_WEIGHT = 0.05            # every parent of a linear merge contributes at least this, positively
# Task arithmetic scales each task vector by at most about one; a larger scale is a line through
# two relatives extended past them (a parent read as its merge pushed further), not a merge.
MAX_SCALE = 1.2
# A single parent that leaves at most this share of the child's rows holds its weights (up to
# storage rounding): nothing is left for a merge to explain, however well an average also fits.
SAME_WEIGHTS = 1e-4
# ... or, stored in fewer bits (a bf16 merge of parents closer than a few per cent: rounding is
# then most of the residual), a fit that reproduces this share of the child's stored entries to
# within its storage rounding; a light fine-tune moves far more of them.
REPRODUCED = 0.98
ROUNDING_UNITS = 2           # a merge computed in 16 bits rounds each product and the sum
# ... or the entrywise signature of trimmed and sign-elected merges (awm.tree.entrywise).
SAMPLED_ENTRIES = 1 << 18    # the entrywise test reads this many fixed entries of every model's rows
MERGE_CANDIDATES = 6         # the closest models tried as parents, in sets of two and three
# A layer closer than this (relative Gram distance) to a parent's layer was taken from it.
COPIED_LAYER = 0.02
COPY_MARGIN = 0.1           # ... and ten times closer to it than to the next candidate


class RowSpace:
    """Inner products of several same-shape models' kept rows (raw W_q and W_k as stored), per
    kept layer and in total, float64."""

    def __init__(self, digests):
        self.names = list(digests)
        self.layers = row_layers(next(iter(digests.values())).num_layers)
        count = len(self.names)
        self.per_tensor = np.zeros((len(self.layers), 2, count, count))          # (kept layer, W_q / W_k, model, model)
        rows = {name: digest.kept_rows() for name, digest in digests.items()}
        for position, layer in enumerate(self.layers):
            for kind in (0, 1):
                vectors = [rows[name][layer][kind].double().reshape(-1) for name in self.names]
                for i, j in itertools.combinations_with_replacement(range(count), 2):
                    self.per_tensor[position, kind, i, j] = self.per_tensor[position, kind, j, i] = float(vectors[i] @ vectors[j])
        self.per_layer = self.per_tensor.sum(1)
        self.total = self.per_layer.sum(0)
        self._rows, self._samples = rows, None

    @property
    def samples(self):
        """The same entries of every model's rows, flattened (for the entrywise merge test; drawn
        on first use: most row spaces only measure distances)."""
        if self._samples is None:
            self._samples = self._draw_samples(self._rows)
        return self._samples

    def _draw_samples(self, rows):
        flat = {name: torch.cat([rows[name][layer][kind].float().reshape(-1) for layer in self.layers for kind in (0, 1)])
                for name in self.names}
        size = next(iter(flat.values())).numel()
        picked = torch.randperm(size, generator=torch.Generator().manual_seed(0))[:SAMPLED_ENTRIES]
        return {name: values[picked] for name, values in flat.items()}

    def index(self, name):
        return self.names.index(name)

    def stored_bits(self, name):
        """Mantissa bits of the format the model's rows are stored in (a digest keeps them so)."""
        return rounding.bits_of(self._rows[name][self.layers[0]][0].dtype)

    def _pieces(self, names):
        """Every kept W_q / W_k, flattened float64, per model: [(layer position, kind, [tensor per name])]."""
        return [(position, kind, [self._rows[n][layer][kind].double().reshape(-1) for n in names])
                for position, layer in enumerate(self.layers) for kind in (0, 1)]

    def refit(self, child, parents, per_tensor):
        """Weights of child ~ sum_k w_k parent_k fitted on the stored rows through rounding
        (awm.tree.rounding): one set for every kept tensor, or one set per tensor."""
        bits, pieces = self.stored_bits(child), self._pieces([child, *parents])
        if per_tensor:
            return [list(rounding.least_squares(own, others, bits)) for _, _, (own, *others) in pieces]
        own = torch.cat([values[0] for *_, values in pieces])
        others = [torch.cat([values[k] for *_, values in pieces]) for k in range(1, len(parents) + 1)]
        return [list(rounding.least_squares(own, others, bits))] * len(pieces)

    def reproduced(self, child, parents, weights):
        """The share of the child's kept entries that sum_k w_k parent_k reproduces within
        ROUNDING_UNITS units of the child's storage format, at the magnitude of the largest term
        (weights: one set per kept tensor, in _pieces' order)."""
        bits, within, total = self.stored_bits(child), 0, 0
        if bits is None:
            return 0.0
        for (_, _, (target, *others)), own in zip(self._pieces([child, *parents]), weights):
            terms = [w * values for w, values in zip(own, others)]
            scale = torch.stack([target.abs()] + [t.abs() for t in terms]).amax(0)
            within += int(((target - sum(terms)).abs() <= ROUNDING_UNITS * unit(scale, bits)).sum())
            total += target.numel()
        return within / max(total, 1)

    def distance(self, a, b, gram=None):
        """||R_a - R_b|| / sqrt(||R_a|| ||R_b||): how far apart the weights are (0 for a copy)."""
        g = self.total if gram is None else gram
        i, j = self.index(a), self.index(b)
        return float(np.sqrt(max(0.0, g[i, i] + g[j, j] - 2 * g[i, j]) / np.sqrt(g[i, i] * g[j, j])))

    def turn(self, parent, middle, child):
        """Cosine of the angle at `middle` between the steps to `parent` and to `child`. Along a
        chain parent -> middle -> child the child keeps the middle's change and adds its own, so
        the angle is right or obtuse (<= 0); a child that moves partly back toward the parent
        (> 0) did not start from the middle."""
        g = self.total
        p, m, c = self.index(parent), self.index(middle), self.index(child)
        inner = g[p, c] - g[p, m] - g[m, c] + g[m, m]
        back, out = g[p, p] - 2 * g[p, m] + g[m, m], g[c, c] - 2 * g[c, m] + g[m, m]
        return float(inner / np.sqrt(back * out)) if back > 0 and out > 0 else 0.0

    def fit(self, child, parents, gram=None):
        """Least-squares child ~ sum_k w_k parent_k: (weights, residual / ||child||)."""
        g = self.total if gram is None else gram
        c, p = self.index(child), [self.index(name) for name in parents]
        normal, target = g[np.ix_(p, p)], g[p, c]
        weights = np.linalg.lstsq(normal, target, rcond=None)[0]
        residual = g[c, c] - 2 * weights @ target + weights @ normal @ weights
        return weights, float(np.sqrt(max(0.0, residual) / g[c, c]))


@dataclass
class MergeFit:
    parents: list
    weights: list           # fitted coefficients, in the parents' order (None: not a linear combination)
    residual: float         # what the fit leaves unexplained, relative
    single: str             # the best single parent
    single_residual: float
    base: str = None        # the base of an entrywise (TIES / DARE) merge
    per_tensor: list = None     # [(layer, "q" / "k", [weight per parent])] when the coefficients vary by tensor
    densities: list = None      # entrywise merges: the share of each parent's change kept
    method: str = None          # "linear", "task arithmetic", "per-tensor linear" (SLERP, gradients), "TIES", "DARE", "DARE-TIES"
    entry_weights: list = None  # entrywise merges: each parent's weight in the mix


def best_merge(space, child, candidates):
    """The parents `child` is a merge of, or None: a weighted average with positive weights that
    leaves almost nothing of the best single parent's residual (one set of coefficients, or one
    per W_q / W_k tensor as SLERP and mergekit's layer gradients give), else the entrywise
    signature of a trimmed or sign-elected merge of two candidates over a third."""
    singles = {name: space.fit(child, [name])[1] for name in candidates}
    if len(singles) < 2:
        return None
    single = min(singles, key=singles.get)
    if singles[single] <= SAME_WEIGHTS or resaved(space, child, single, singles[single]):
        return None
    closest = sorted(candidates, key=lambda name: space.distance(child, name))[:MERGE_CANDIDATES]
    for size in (2, 3):                      # the fewest parents that explain it
        fits = []
        for parents in itertools.combinations(closest, size):
            weights, residual = space.fit(child, list(parents))
            if min(weights) >= MIN_WEIGHT:
                fits.append(MergeFit(list(parents), [float(w) for w in weights], residual, single, singles[single], method="linear"))
        fits.sort(key=lambda fit: fit.residual)
        # Several sets may fit within rounding (other merges of the same parents): the first that
        # reproduces the child's stored entries, in the order of what they leave.
        for fit in fits:
            if explains(space, child, fit):
                return fit
            if not _within_rounding(space, child, fit.residual):
                break
    task = task_arithmetic(space, child, closest, single, singles[single])
    if task is not None:
        return task
    varying = per_tensor_merge(space, child, closest, single, singles[single])
    if varying is not None:
        return varying
    found = entrywise.entrywise_merge(space, child, candidates, closest)
    if found is None:
        return None
    return MergeFit(found.parents, None, found.residual, single, singles[single], base=found.base,
                    densities=found.densities, method=found.method, entry_weights=found.weights)


def explains(space, child, fit, per_tensor=False):
    """Does a linear fit explain the child: it leaves at most LINEAR_FIT of the best single
    parent's residual, or, where what it leaves is of storage-rounding size, its weights refitted
    through rounding reproduce nearly every stored entry (the fit then takes those weights)."""
    if fit.residual <= LINEAR_FIT * fit.single_residual:
        return True
    if not _within_rounding(space, child, fit.residual):
        return False
    task = fit.method == "task arithmetic"
    parents = ([fit.base] if task else []) + fit.parents
    weights = space.refit(child, parents, per_tensor)
    if space.reproduced(child, parents, weights) < REPRODUCED:
        return False
    if per_tensor:
        fit.per_tensor = [(layer, kind, [float(w) for w in own]) for (layer, kind, _), own in zip(fit.per_tensor, weights)]
        fit.weights = [float(w) for w in np.mean(weights, axis=0)]
    else:
        fit.weights = [float(w) for w in weights[0][1 if task else 0:]]
    return min(fit.weights) >= MIN_WEIGHT and (not task or max(fit.weights) <= MAX_SCALE)


def resaved(space, child, single, residual=None):
    """Is the child one model's weights saved in fewer bits (every entry its value, rounded)?"""
    residual = space.fit(child, [single])[1] if residual is None else residual
    return _within_rounding(space, child, residual) and \
        space.reproduced(child, [single], [[1.0]] * 2 * len(space.layers)) >= REPRODUCED


def mix_reproduces(space, child, parents):
    """Does a positive mix of `parents` reproduce the child's stored entries (a merge of its own,
    saved in fewer bits, beside another merge of the same parents)?"""
    weights, residual = space.fit(child, parents)
    # No single-parent residual to beat: only the test through rounding can say yes.
    fit = MergeFit(list(parents), [float(w) for w in weights], residual, parents[0], 0.0, method="linear")
    return bool(min(weights) >= MIN_WEIGHT and explains(space, child, fit))


def _within_rounding(space, child, residual):
    """Is a relative residual no larger than the child's storage format's rounding can leave?"""
    bits = space.stored_bits(child)
    return bits is not None and bits < 23 and residual <= ROUNDING_UNITS * 2.0 ** -bits


def task_arithmetic(space, child, closest, single, single_residual):
    """Task arithmetic: child = base + l1 (p1 - base) + l2 (p2 - base), the scales summing past
    one (else it is a plain weighted average), so the base's coefficient 1 - l1 - l2 is
    negative. Returns the fit with the parents' scales as weights and the base named."""
    best = None
    for base in closest:
        others = [name for name in closest if name != base]
        for first, second in itertools.combinations(others, 2):
            weights, residual = space.fit(child, [base, first, second])
            scales = weights[1:]
            if weights[0] < -MIN_WEIGHT and MIN_WEIGHT <= min(scales) and max(scales) <= MAX_SCALE and \
                    (best is None or residual < best.residual):
                best = MergeFit([first, second], [float(w) for w in weights[1:]], residual, single, single_residual,
                                base=base, method="task arithmetic")
    return best if best is not None and explains(space, child, best) else None


def per_tensor_merge(space, child, closest, single, single_residual):
    """A linear merge whose coefficients change from tensor to tensor (SLERP is per tensor a
    weighted sum of its two ends; mergekit spreads t over the layers): each kept W_q / W_k
    fitted on its own, the residuals pooled. Every parent weighs at least MIN_WEIGHT somewhere
    and no coefficient is clearly negative."""
    best = None
    for size in (2, 3):
        if best is not None and explains(space, child, best, per_tensor=True):
            return best                      # the fewest parents that explain it
        for parents in itertools.combinations(closest, size):
            fits, left = [], 0.0
            for position, layer in enumerate(space.layers):
                for kind in (0, 1):
                    gram = space.per_tensor[position, kind]
                    weights, residual = space.fit(child, list(parents), gram)
                    fits.append((layer, "qk"[kind], [float(w) for w in weights]))
                    left += residual ** 2 * gram[space.index(child), space.index(child)]
            residual = float(np.sqrt(left / space.total[space.index(child), space.index(child)]))
            weights = np.array([w for *_, w in fits])
            if weights.min() < -MIN_WEIGHT or weights.max(0).min() < MIN_WEIGHT:
                continue
            if best is None or residual < best.residual:
                best = MergeFit(list(parents), [float(w) for w in weights.mean(0)], residual, single, single_residual,
                                per_tensor=fits, method="per-tensor linear")
    if best is not None and explains(space, child, best, per_tensor=True):
        return best
    return None


def per_layer_sources(space, child, candidates):
    """For each kept layer, the candidate the child's layer is closest to, whether it is a copy of
    it: a layer-wise merge takes different layers from different parents, each nearly verbatim
    (within COPIED_LAYER, and much closer to its source than to any other candidate: a layer
    interpolated between relatives is close to all of them)."""
    sources = []
    for position in range(len(space.layers)):
        gram = space.per_layer[position]
        distances = sorted((space.distance(child, name, gram), name) for name in candidates)
        nearest, name = distances[0]
        runner_up = distances[1][0] if len(distances) > 1 else float("inf")
        sources.append((name, nearest <= COPIED_LAYER and nearest <= COPY_MARGIN * runner_up))
    return sources


SKETCH_COLUMNS = 32         # a Gram is compared through K S, S a fixed random d x 32 matrix


def _sketch(kernels, probe):
    """W_q and W_k Grams of one layer through the probe: distances between sketches track the
    distances between the Grams (exactly 0 for a copied layer) at a fraction of the memory."""
    return torch.cat([kernels.query.float() @ probe, kernels.key.float() @ probe], dim=1)


def _sketch_distance(a, b):
    return float((a - b).norm() / (a.norm() * b.norm()).sqrt().clamp_min(1e-30))


def layer_sources(child, parents):
    """Every layer of the child with the parent layer it came from: [(parent, layer, distance,
    CKA %)] per child layer, from the W_q / W_k Grams (a shared hidden basis is assumed).
    parents: {name: digest}. Each parent layer is read once; the CKA of each chosen pair once."""
    probe = torch.randn(child.hidden_size, SKETCH_COLUMNS, generator=torch.Generator().manual_seed(0))
    child_sketches = [_sketch(child.layer(j), probe.to(child.device)) for j in range(child.num_layers)]
    best = [None] * child.num_layers
    for name, digest in parents.items():
        for i in range(digest.num_layers):
            sketch = _sketch(digest.layer(i), probe.to(digest.device))
            for j, own in enumerate(child_sketches):
                distance = _sketch_distance(own, sketch)
                if best[j] is None or distance < best[j][2]:
                    best[j] = (name, i, distance)
    sources = []
    for j, (name, i, distance) in enumerate(best):
        own, other = child.layer(j), parents[name].layer(i)
        score = 50.0 * sum(cka.u_cka(cka.Kernel(x, symmetric=True), cka.Kernel(y, symmetric=True))
                           for x, y in ((own.query, other.query), (own.key, other.key)))
        sources.append((name, i, distance, round(score, 4)))
    return sources


def gram_distance(a, b, layers):
    """How far two same-shape models' W_q / W_k Grams lie apart over `layers`, relative: blind to
    how each stores the rows of a head (a GGUF's rotary row order, a quantizer's row permutation),
    so a quantized copy is measured against float models as against its own kind."""
    total = own_a = own_b = 0.0
    for layer in layers:
        ka, kb = a.layer(layer), b.layer(layer)
        for x, y in ((ka.query, kb.query), (ka.key, kb.key)):
            x, y = x.double(), y.double().to(x.device)
            total += float((x - y).pow(2).sum())
            own_a, own_b = own_a + float(x.pow(2).sum()), own_b + float(y.pow(2).sum())
    return (total / max((own_a * own_b) ** 0.5, 1e-300)) ** 0.5


def layer_records(traced):
    """layer_sources' answer as the tree records it: [{"layer", "source", "source_layer", "score"}]."""
    return [{"layer": j, "source": name, "source_layer": i, "score": score} for j, (name, i, _, score) in enumerate(traced)]
