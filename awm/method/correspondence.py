"""Do two embeddings' aligned hidden dims genuinely correspond? A test on held-out tokens."""
from dataclasses import dataclass

import torch
from scipy.stats import t as student_t

from awm.method.cka import EPS

CORRESPONDENCE_ALPHA = 1e-4   # per-dim false-match probability of the correspondence test


@dataclass
class CorrespondenceTest:
    matched_dims: int          # target dims whose aligned partner is confirmed on held-out tokens
    target_dims: int
    p_value: float             # upper bound, valid under any dependence between dims
    threshold_sigmas: float
    median_matched_sigmas: float
    # Effect size: the median over target dims of the held-out agreement (cosine or correlation,
    # signed as found) with the partner found on the other half. Significance grows with the
    # number of tokens; this does not: near 1 for a copy, a few tenths for unrelated models
    # whose embeddings are merely linearly related.
    agreement: float = float("nan")

    @property
    def fraction(self):
        return self.matched_dims / self.target_dims


def correspondence_test(residual_found, residual_held_out, base_index, alpha_per_dim=CORRESPONDENCE_ALPHA):
    """Do the aligned dims genuinely correspond, beyond the directions all columns share?

    The shared tokens are split in two. On the first half each target dim picks its best
    residual partner; on the second half that partner's residual cosine, signed as found, is
    compared with the noise of the second half's other entries. Under "no correspondence" the
    pick carries no information about held-out tokens, so the held-out value is plain noise:
    no selection bias and no correction for the number of candidates. Noise variance depends
    on row and column (trained models have outlier dims): var_ij = row_i * column_j / overall,
    mean squares of the entries that were not picked. A dim is confirmed when its held-out
    z exceeds the one-sided alpha bound and its partner is the one the method's alignment
    chose. With K confirmed of d, Markov's inequality gives P(K' >= K) <= d * alpha / K
    under any dependence between dims.
    """
    found, held_out = residual_found.double().cpu(), residual_held_out.double().cpu()
    target_dims, base_dims = found.shape
    rows = torch.arange(target_dims)
    partner = found.abs().argmax(dim=1)
    value = held_out[rows, partner] * torch.sign(found[rows, partner])
    noise = held_out.square()
    noise[rows, partner] = 0.0
    picked_in_column = torch.zeros(base_dims, dtype=torch.float64).index_add_(0, partner, torch.ones(target_dims, dtype=torch.float64))
    row_ms = noise.sum(1) / (base_dims - 1)
    column_ms = noise.sum(0) / (target_dims - picked_in_column).clamp_min(1)
    overall_ms = noise.sum() / (target_dims * (base_dims - 1))
    scale = (row_ms * column_ms[partner] / overall_ms.clamp_min(EPS)).sqrt().clamp_min(EPS)
    # The scale is itself estimated from ~d entries per row and per column: a Student t bound
    # with those degrees of freedom keeps the level at alpha for small models too.
    degrees = 1.0 / (1.0 / (base_dims - 1) + 1.0 / max(target_dims - 1, 1))
    threshold = float(student_t.ppf(1 - alpha_per_dim, degrees))
    sigmas = value / scale
    confirmed = (sigmas > threshold) & (partner == base_index.cpu())
    count = int(confirmed.sum())
    p_value = min(1.0, target_dims * alpha_per_dim / count) if count else 1.0
    return CorrespondenceTest(count, target_dims, p_value, threshold, float(sigmas.median()), float(value.median()))
