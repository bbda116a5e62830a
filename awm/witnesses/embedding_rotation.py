"""The embedding as a witness when no permutation explains it: an orthogonal map between the
two hidden spaces, as rotation-based quantization (QuaRot, SpinQuant) and SliceGPT leave them.

Such a checkpoint multiplies the residual stream by an orthogonal Q: its embedding is E Q, so
no pairing of single dims relates it to the original. A map fitted by orthogonal Procrustes
(on the least-squares regression of one embedding on the other) recovers Q, or the slice of
it that SliceGPT keeps; whether the map is real is tested as the permutation is: fitted on one half of a
token sample (with each model's common directions removed), then checked dim by dim, in the
mapped coordinates, on the other half.
"""
import torch

from awm.method import embedding_stats as stats
from awm.method.correspondence import correspondence_test
from awm.witnesses.verdict import EMBEDDING_ROTATION, witness_passes

# An even sample of the shared tokens bounds the cost (three d x d products per half, one SVD):
# enough tokens to fix a d x d map for the widest models, far more than the test needs.
ROTATION_SAMPLE_TOKENS = 32768


class SecondMoments:
    """Sums over one set of tokens of both embeddings' rows, their outer products and cross
    products: every covariance the witness needs, float64."""

    def __init__(self, rows_a, rows_b, device, chunk_rows=stats.COSINE_CHUNK_ROWS):
        self.n, sums = 0, None
        for start in range(0, len(rows_a), chunk_rows):
            a = rows_a[start:start + chunk_rows].to(device=device, dtype=torch.float32)
            b = rows_b[start:start + chunk_rows].to(device=device, dtype=torch.float32)
            parts = (a.sum(0), b.sum(0), a.t() @ a, b.t() @ b, a.t() @ b)
            sums = [p.double() for p in parts] if sums is None else [s.add_(p.double()) for s, p in zip(sums, parts)]
            self.n += a.shape[0]
        self.sum_a, self.sum_b, self.aa, self.bb, self.ab = sums

    def covariances(self, dtype=torch.float64):
        """(C_aa, C_bb, C_ab), centered over these tokens (sums in float64, then `dtype`)."""
        mean_a, mean_b = self.sum_a / self.n, self.sum_b / self.n
        return tuple(m.to(dtype) for m in (self.aa / self.n - torch.outer(mean_a, mean_a), self.bb / self.n - torch.outer(mean_b, mean_b),
                                            self.ab / self.n - torch.outer(mean_a, mean_b)))


def polar(matrix):
    """The nearest matrix with orthonormal columns (orthogonal Procrustes): U V^T of the SVD. The
    float32 divide-and-conquer SVD can fail to converge on nearly degenerate spectra (a block
    rotation's); the same in float64 then does."""
    try:
        u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    except torch.linalg.LinAlgError:
        u, _, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
        return (u @ vh).to(matrix.dtype)
    return u @ vh


# Ridge on the base's covariance, relative to its mean eigenvalue: anisotropic embeddings are
# ill-conditioned, and the map only needs the directions the tokens actually use.
RIDGE = 1e-6


def fit_map(c_aa, c_ab):
    """The map with orthonormal columns closest to the least-squares regression of the target's
    dims on the base's (C_aa^-1 C_ab): exact for B = A Q with Q square orthogonal or a slice of
    one, where the Procrustes solution on C_ab alone is exact only for square Q."""
    ridge = RIDGE * c_aa.diagonal().mean().clamp_min(stats.EPS)
    regression = torch.linalg.solve(c_aa + ridge * torch.eye(c_aa.shape[0], dtype=c_aa.dtype, device=c_aa.device), c_ab)
    return polar(regression)


# The map and the test statistic need no float64: the sums are float64, the linear algebra on
# d x d matrices (solve, SVD, products) float32, several times faster on a CPU.
ALGEBRA = torch.float32


def _without(basis):
    """x -> x (I - B B^T) on both sides of a covariance, for an orthonormal basis B."""
    basis = basis.to(ALGEBRA)
    return lambda matrix, side: matrix - (basis @ (basis.t() @ matrix) if side == "rows" else (matrix @ basis) @ basis.t())


def _mapped_correlations(moments, rotation, drop_a, drop_b):
    """Correlations (target dim x mapped base dim) over one half, common directions removed."""
    c_aa, c_bb, c_ab = moments.covariances(ALGEBRA)
    r_ab = drop_b(drop_a(c_ab, "rows"), "cols")
    r_aa = drop_a(drop_a(c_aa, "rows"), "cols")
    r_bb = drop_b(drop_b(c_bb, "rows"), "cols")
    cross = (rotation.t() @ r_ab).t()                                    # target i x mapped k
    mapped_var = ((r_aa @ rotation) * rotation).sum(0)
    scale = torch.outer(r_bb.diagonal().clamp_min(0), mapped_var.clamp_min(0)).sqrt().clamp_min(stats.EPS)
    return cross / scale


def fit(base_embedding, base_ids, target_embedding, target_ids, base_axes, target_axes, device, always=False):
    """(map, test): `map` (base dims x target dims, orthonormal columns) takes the base's hidden
    space to the target's, fitted on the raw rows of every sampled token (None when the test
    fails); `test` checks, on held-out
    tokens, whether a map fitted on the other half relates the two embeddings beyond the
    directions all their columns share. *_ids: the shared tokens' rows in each embedding.
    always: fit the map even when the test fails (to measure the null of scores under it)."""
    step = max(1, len(base_ids) // ROTATION_SAMPLE_TOKENS)
    base_rows, target_rows = base_embedding[base_ids[::step]], target_embedding[target_ids[::step]]
    halves = [SecondMoments(base_rows[h::2], target_rows[h::2], device) for h in (0, 1)]
    drop_a, drop_b = _without(base_axes.to(device)), _without(target_axes.to(device))
    c_aa, _, c_ab = halves[0].covariances(ALGEBRA)
    found_map = fit_map(drop_a(drop_a(c_aa, "rows"), "cols"), drop_b(drop_a(c_ab, "rows"), "cols"))
    correlations = [_mapped_correlations(m, found_map, drop_a, drop_b) for m in halves]
    test = correspondence_test(correlations[0], correlations[1], torch.arange(found_map.shape[1]))
    if not (always or witness_passes(EMBEDDING_ROTATION, test)):
        return None, test                    # no map to score under: not fitted
    scoring_map = fit_map((halves[0].aa + halves[1].aa).to(ALGEBRA), (halves[0].ab + halves[1].ab).to(ALGEBRA))
    return scoring_map, test
