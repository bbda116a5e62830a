"""The mathematics of AWM: unbiased linear CKA, hidden-dimension alignment, layer matching.

Conventions: a weight matrix W is (out_features, hidden). AWM's samples are the hidden
dimensions and its features the output rows, so the linear kernel of W is the Gram matrix
K = W^T W over hidden dims. All functions take and return torch tensors on any device.
"""
from dataclasses import dataclass
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import t as student_t

COSINE_CHUNK_ROWS = 16384     # shared tokens per block of the embedding cosine
GRAM_BLOCK = 512              # column block of the symmetric Gram product
EPS = 1e-12
CORRESPONDENCE_ALPHA = 1e-4   # per-dim false-match probability of the correspondence test


def gram(weight):
    """Linear kernel over hidden dims: K[i, j] = <column i, column j> of W.

    K is symmetric, so only the block upper triangle is multiplied and mirrored: about half
    the flops of W^T W, with bit-identical entries.
    """
    hidden = weight.shape[1]
    if hidden <= 2 * GRAM_BLOCK:
        return weight.t() @ weight
    kernel = torch.empty(hidden, hidden, dtype=weight.dtype, device=weight.device)
    for start in range(0, hidden, GRAM_BLOCK):
        stop = min(start + GRAM_BLOCK, hidden)
        rows = weight[:, start:stop].t() @ weight[:, start:]
        kernel[start:stop, start:] = rows
        kernel[stop:, start:stop] = rows[:, stop - start:].t()
    return kernel


def u_center_(matrix):
    """U-centering (Szekely & Rizzo 2014) of an n x n matrix, n >= 4, in place.

    <U(K), U(L)> / (n (n - 3)) is exactly the unbiased HSIC estimator of Song et al. (2012),
    so unbiased CKA is the cosine between U-centered kernels. Rows and columns are centered
    separately, which also defines it for non-symmetric matrices (the QK circuit). In place,
    because fresh hidden x hidden buffers cost more than the arithmetic on them.
    """
    n = matrix.shape[0]
    matrix.diagonal().zero_()
    row_sums = matrix.sum(dim=1, keepdim=True)
    col_sums = matrix.sum(dim=0, keepdim=True)
    total = row_sums.sum()
    matrix.sub_(row_sums / (n - 2)).sub_(col_sums / (n - 2)).add_(total / ((n - 1) * (n - 2)))
    matrix.diagonal().zero_()
    return matrix


def u_center(kernel):
    return u_center_(kernel.clone())


def dot64(a, b, block_rows=256):
    """<a, b> accumulated in float64, block by block: a float32 dot over 16M entries would
    lose about four digits, and converting whole matrices costs two fresh buffers."""
    total = 0.0
    for start in range(0, a.shape[0], block_rows):
        total += torch.dot(a[start:start + block_rows].reshape(-1).double(),
                           b[start:start + block_rows].reshape(-1).double()).item()
    return total


def unit_u_centered(kernel, in_place=False):
    """U(K) / ||U(K)||, or None when U(K) is zero (CKA is then undefined)."""
    if kernel.shape[0] < 4:
        return None
    centered = u_center_(kernel if in_place else kernel.clone())
    norm = dot64(centered, centered) ** 0.5
    if norm <= EPS or not np.isfinite(norm):
        return None
    return centered.div_(norm)


def unit_inner(unit_a, unit_b):
    """Cosine between two unit U-centered kernels; NaN where either is undefined."""
    if unit_a is None or unit_b is None:
        return float("nan")
    return dot64(unit_a, unit_b)


def unbiased_hsic(kernel_k, kernel_l):
    """Song et al. (2012) unbiased HSIC in its closed form (kernels n x n, n >= 4)."""
    n = kernel_k.shape[0]
    k = kernel_k.double().clone()
    l = kernel_l.double().clone()
    k.diagonal().zero_()
    l.diagonal().zero_()
    ones = torch.ones(n, dtype=torch.float64, device=k.device)
    trace_term = (k * l.t()).sum()
    sums_term = (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
    cross_term = 2.0 / (n - 2) * (ones @ k @ l @ ones)
    return float((trace_term + sums_term - cross_term).item() / (n * (n - 3)))


def unbiased_cka(kernel_k, kernel_l):
    """Unbiased linear CKA between two kernels over the same n samples."""
    return unit_inner(unit_u_centered(kernel_k), unit_u_centered(kernel_l))


def cka_of_weights(weight_x, weight_y):
    """CKA of two (out, hidden) weights whose hidden dims are already aligned."""
    return unbiased_cka(gram(weight_x), gram(weight_y))


# ----------------------------------------------------------------------------- alignment
@dataclass
class ColumnProducts:
    """Sums over the shared tokens of two embeddings, enough for raw and residual cosines."""
    cross: torch.Tensor      # (d_a, d_b): sum over tokens of a[t, i] * b[t, j]
    sum_a: torch.Tensor
    sum_b: torch.Tensor
    sumsq_a: torch.Tensor
    sumsq_b: torch.Tensor
    gram_basis_a: torch.Tensor    # A^T A @ basis_a (uncentered), for the residual cosines
    gram_basis_b: torch.Tensor
    rows: int

    def __add__(self, other):
        """The products over both sets of tokens."""
        fields = ("cross", "sum_a", "sum_b", "sumsq_a", "sumsq_b", "gram_basis_a", "gram_basis_b", "rows")
        return ColumnProducts(*(getattr(self, f) + getattr(other, f) for f in fields))


def row_blocks(rows, device, chunk_rows=COSINE_CHUNK_ROWS):
    """float32 blocks of rows(start, stop) on `device` until the rows run out (for the
    principal axes' token sample, usually a single block)."""
    start = 0
    while (block := rows(start, start + chunk_rows)).shape[0]:
        yield block.to(device=device, dtype=torch.float32)
        start += block.shape[0]


def column_products(rows_a, rows_b, device, basis_a=None, basis_b=None, chunk_rows=COSINE_CHUNK_ROWS):
    """Accumulate the column statistics of A and B over the same rows, block by block.

    rows_a / rows_b are callables (start, stop) -> float tensor of those shared-token rows,
    so the product never holds two float32 embeddings. basis_a / basis_b (hidden x k) ride
    along: A^T (A basis) costs a thin product on rows that are already loaded.
    """
    thin = lambda block, basis: block.t() @ (block @ basis) if basis is not None else block.new_zeros(block.shape[1], 0)
    # An explicit loop, not row_blocks: rebinding block_a / block_b frees each float32 block
    # before the next is gathered (suspended generators would keep two alive per side).
    totals, count = None, 0
    while (block_a := rows_a(count, count + chunk_rows)).shape[0]:
        block_a = block_a.to(device=device, dtype=torch.float32)
        block_b = rows_b(count, count + chunk_rows).to(device=device, dtype=torch.float32)
        parts = (block_a.t() @ block_b, block_a.sum(0), block_b.sum(0), (block_a * block_a).sum(0), (block_b * block_b).sum(0),
                 thin(block_a, basis_a), thin(block_b, basis_b))
        totals = list(parts) if totals is None else [t.add_(p) for t, p in zip(totals, parts)]
        count += block_a.shape[0]
    if totals is None:
        raise ValueError("no shared rows")
    return ColumnProducts(*totals, rows=count)


def cosine_from_products(products):
    """The paper's cosine between raw (uncentered) embedding columns."""
    norms_a = products.sumsq_a.sqrt().clamp_min(EPS)
    norms_b = products.sumsq_b.sqrt().clamp_min(EPS)
    return products.cross / torch.outer(norms_a, norms_b)


# ----------------------------------------------------------------------------- common directions
@dataclass
class CommonDirections:
    """A model's top principal axes over some shared tokens.

    basis: (hidden, k) orthonormal principal axes of the centered embedding; covariance_basis:
    Cov @ basis for the same tokens, so residual column norms need no extra pass.
    """
    basis: torch.Tensor
    covariance_basis: torch.Tensor


def principal_axes(rows, hidden, count, device, iterations=2, oversample=8):
    """Top `count` principal axes of the centered rows by blocked subspace iteration, each
    pass Cov @ Q = X^T (X Q) - n mu (mu^T Q): the rows are never centered or copied whole.
    The axes only need to span the dominant directions, so a few passes suffice."""
    total, sums = 0, torch.zeros(hidden, device=device)
    for block in row_blocks(rows, device):
        sums += block.sum(0)
        total += block.shape[0]
    mean = sums / total

    def covariance_times(matrix):
        product = sum(block.t() @ (block @ matrix) for block in row_blocks(rows, device))
        return product - total * mean[:, None] * (mean @ matrix)[None, :]

    generator = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(hidden, min(hidden, count + oversample), generator=generator).to(device))[0]
    for _ in range(iterations):
        q = torch.linalg.qr(covariance_times(q))[0]
    values, vectors = torch.linalg.eigh(q.t() @ covariance_times(q))
    return q @ vectors[:, values.argsort(descending=True)[:count]]


def common_directions(products, side, basis):
    """The basis and its exact Cov @ basis over side 'a' or 'b' of a ColumnProducts' rows."""
    sums, gram_basis = (products.sum_a, products.gram_basis_a) if side == "a" else (products.sum_b, products.gram_basis_b)
    mean = sums / products.rows
    return CommonDirections(basis, gram_basis - products.rows * mean[:, None] * (mean @ basis)[None, :])


def projector_basis(mean, basis):
    """Orthonormal basis of span{mean, principal axes}: what residual kernels project out."""
    stacked = torch.cat([mean[:, None], basis], dim=1)
    q, r = torch.linalg.qr(stacked)
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max().clamp_min(EPS)
    return q[:, keep]


def residual_cosine(products, directions_a, directions_b):
    """Cosine between embedding columns after centering them over the shared tokens and
    removing each model's top principal axes: what is left once the directions that every
    column shares are gone. Computed from the raw products in O(d^2 k)."""
    n = products.rows
    mean_a, mean_b = products.sum_a / n, products.sum_b / n
    centered = products.cross - n * torch.outer(mean_a, mean_b)
    va, vb = directions_a.basis, directions_b.basis
    left = centered - va @ (va.t() @ centered)
    residual = left - (left @ vb) @ vb.t()
    return residual / torch.outer(_residual_norms(products.sumsq_a, mean_a, n, directions_a),
                                  _residual_norms(products.sumsq_b, mean_b, n, directions_b))


def _residual_norms(sumsq, mean, n, directions):
    """||X_c (I - V V^T) e_i|| from the diagonal of Cov, V and Cov V (no pass over tokens)."""
    v, cv = directions.basis, directions.covariance_basis
    variance = sumsq - n * mean * mean
    squared = variance - 2 * (v * cv).sum(1) + ((v @ (v.t() @ cv)) * v).sum(1)
    return squared.clamp_min(0).sqrt().clamp_min(EPS)


def project_out(kernel, basis):
    """(I - B B^T) K (I - B B^T) for an orthonormal basis B of a few columns, in place."""
    basis = basis.to(device=kernel.device, dtype=kernel.dtype)
    kernel.addmm_(basis, basis.t() @ kernel, alpha=-1.0)
    kernel.addmm_(kernel @ basis, basis.t(), alpha=-1.0)
    return kernel


# ----------------------------------------------------------------------------- correspondence test
@dataclass
class CorrespondenceTest:
    matched_dims: int          # target dims whose aligned partner is confirmed on held-out tokens
    target_dims: int
    p_value: float             # upper bound, valid under any dependence between dims
    threshold_sigmas: float
    median_matched_sigmas: float

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
    return CorrespondenceTest(count, target_dims, p_value, threshold, float(sigmas.median()))


def align_hidden(cosine):
    """LAP on cost 1 - |cos|: each target dim (row) gets one base dim (column) and a sign.

    Returns (base_index, sign) with base_index[i] the base dim matched to target dim i and
    sign[i] in {+1, -1}; a zero cosine counts as +1, so no column is ever zeroed.
    """
    magnitude = cosine.abs().cpu().numpy().astype(np.float64)
    rows, cols = linear_sum_assignment(1.0 - magnitude)
    order = np.argsort(rows)
    base_index = torch.as_tensor(cols[order], dtype=torch.long)
    matched = cosine.cpu()[torch.as_tensor(rows[order]), base_index]
    sign = torch.where(matched < 0, -1.0, 1.0)
    return base_index, sign, float(matched.abs().mean())


def reindex_kernel(kernel, base_index, sign):
    """Express a base model's hidden x hidden matrix in the target's dims: s_i s_j K[p_i, p_j]."""
    base_index = base_index.to(kernel.device)
    sign = sign.to(device=kernel.device, dtype=kernel.dtype)
    selected = kernel.index_select(0, base_index).index_select(1, base_index)
    return selected.mul_(sign[:, None]).mul_(sign[None, :])


def match_layers(similarity):
    """Pairs (row, col) that maximise total similarity; every layer of the shallower side is used.

    Equal depth is the identity map by definition (layer i with layer i).
    """
    rows, cols = similarity.shape
    if rows == cols:
        return [(i, i) for i in range(rows)]
    values = np.nan_to_num(np.asarray(similarity, dtype=np.float64), nan=-1.0)
    row_ind, col_ind = linear_sum_assignment(-values)
    return sorted(zip(row_ind.tolist(), col_ind.tolist()))
