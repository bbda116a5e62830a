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
    the flops of W^T W. Small kernels are one product with the upper triangle mirrored too:
    every Gram is exactly symmetric, which the CKA pass relies on.
    """
    hidden = weight.shape[1]
    if hidden <= 2 * GRAM_BLOCK:
        kernel = weight.t() @ weight
        upper = torch.triu_indices(hidden, hidden, 1, device=kernel.device)
        kernel[upper[1], upper[0]] = kernel[upper[0], upper[1]]
        return kernel
    kernel = torch.empty(hidden, hidden, dtype=weight.dtype, device=weight.device)
    for start in range(0, hidden, GRAM_BLOCK):
        stop = min(start + GRAM_BLOCK, hidden)
        rows = weight[:, start:stop].t() @ weight[:, start:]
        kernel[start:stop, start:] = rows
        kernel[stop:, start:stop] = rows[:, stop - start:].t()
    return kernel


@dataclass
class OffDiagonalSums:
    """Float64 sums of a square matrix's off-diagonal entries: with its entries, all that
    U-centering needs (it is affine in them)."""
    diagonal: torch.Tensor    # (n,)
    rows: torch.Tensor        # off-diagonal row sums (n,)
    cols: torch.Tensor
    squares: float            # sum of squares off the diagonal


@dataclass
class Kernel:
    """The matrix diag(s) M[p][:, p] diag(s) as CKA sees it, never formed whole: `index` p
    selects and orders rows and columns (None: all, in order), `sign` s flips them (None: +1).

    U-centering (Szekely & Rizzo 2014) zeroes the diagonal and subtracts row and column means,
    affinely in the entries, so <U(X), U(Y)> is <X, Y> off the diagonal minus terms of O(n)
    sums: nothing is centered, copied or signed, and one pass over both matrices gives a CKA.
    """
    matrix: torch.Tensor
    index: torch.Tensor = None
    sign: torch.Tensor = None
    symmetric: bool = False           # exactly symmetric (a Gram): column sums are the row sums
    sums: OffDiagonalSums = None      # filled by the first pass over it
    _norm_squared: float = None

    def __post_init__(self):
        if self.index is not None:
            self.index = self.index.to(self.matrix.device)
        if self.sign is not None:
            self.sign = self.sign.to(device=self.matrix.device, dtype=torch.float64)

    @property
    def n(self):
        return self.matrix.shape[0] if self.index is None else len(self.index)

    def blocks(self, block_rows=64):
        """(start, stop, float64 rows start:stop), unsigned; float64 makes every product and
        sum of the float32 entries exact enough for the cancellations of U-centering."""
        for start in range(0, self.n, block_rows):
            stop = min(start + block_rows, self.n)
            if self.index is None:
                block = self.matrix[start:stop]
            else:
                block = self.matrix.index_select(0, self.index[start:stop]).index_select(1, self.index)
            yield start, stop, block.to(torch.float64, copy=True)

    def selected(self):
        """The same kernel with its rows and columns gathered once: for one kept and compared many times."""
        if self.index is None:
            return self
        return Kernel(select_kernel(self.matrix, self.index), None, self.sign, self.symmetric, self.sums, self._norm_squared)

    def norm_squared(self):
        """||U(M)||^2."""
        if self.sums is None:
            _scan(self)
        if self._norm_squared is None:
            self._norm_squared = _u_inner(self.sums, self.sums, self.sums.squares, self.n)
        return self._norm_squared


class _SumsAccumulator:
    def __init__(self, kernel):
        n, device = kernel.n, kernel.matrix.device
        self.kernel = kernel
        self.signs = kernel.sign if kernel.sign is not None else torch.ones(n, dtype=torch.float64, device=device)
        self.rows = torch.empty(n, dtype=torch.float64, device=device)
        self.cols = torch.zeros(n, dtype=torch.float64, device=device)
        self.squares = 0.0

    def add(self, start, stop, block):
        # Matrix-vector products: a float64 reduction over dim 0 is several times slower.
        signs = self.signs
        self.rows[start:stop] = (block @ signs) * signs[start:stop]
        if not self.kernel.symmetric:
            self.cols += signs[start:stop] @ block
        self.squares += float(torch.dot(block.reshape(-1), block.reshape(-1)))

    def finish(self):
        kernel = self.kernel
        diagonal = kernel.matrix.diagonal()
        diagonal = (diagonal if kernel.index is None else diagonal[kernel.index]).double()
        cols = self.rows if kernel.symmetric else self.cols * self.signs
        kernel.sums = OffDiagonalSums(diagonal, self.rows - diagonal, cols - diagonal, self.squares - float(diagonal @ diagonal))


def _combined_sign(x, y):
    """The sign vector of <x, y>: each kernel's signs multiply its rows and columns."""
    if x.sign is None or y.sign is None:
        return x.sign if y.sign is None else y.sign
    return x.sign * y.sign


def _scan(x, y=None):
    """One pass over x (and y): fills the sums either lacks and returns their signed inner
    product over all entries (None without y)."""
    sums_x = _SumsAccumulator(x) if x.sums is None else None
    sums_y = _SumsAccumulator(y) if y is not None and y.sums is None else None
    sign = _combined_sign(x, y) if y is not None else None
    inner = 0.0
    blocks_y = y.blocks() if y is not None else None
    for start, stop, block in x.blocks():
        if sums_x is not None:
            sums_x.add(start, stop, block)
        if blocks_y is None:
            continue
        _, _, other = next(blocks_y)
        if sums_y is not None:
            sums_y.add(start, stop, other)
        products = block.mul_(other)
        inner += float(products.sum()) if sign is None else float(sign[start:stop] @ (products @ sign))
    for accumulator in (sums_x, sums_y):
        if accumulator is not None:
            accumulator.finish()
    return inner if y is not None else None


def _u_inner(x, y, inner_off_diagonal, n):
    """<U(X), U(Y)> from the sums of X and Y and <X, Y> off the diagonal. With U(X) = X - a 1^T
    - 1 b^T + c off the diagonal (a = rows/(n-2), b = cols/(n-2), c = total/((n-1)(n-2))):
    <U(X), U(Y)> = <X, Y> - <X - U(X), Y> - <U(X), Y - U(Y)>, each a sum of O(n) terms."""
    a_x, b_x, c_x = x.rows / (n - 2), x.cols / (n - 2), x.rows.sum() / ((n - 1) * (n - 2))
    a_y, b_y, c_y = y.rows / (n - 2), y.cols / (n - 2), y.rows.sum() / ((n - 1) * (n - 2))
    # Row and column sums of U(X) off the diagonal.
    row_u = x.rows - (n - 1) * a_x - (b_x.sum() - b_x) + (n - 1) * c_x
    col_u = x.cols - (n - 1) * b_x - (a_x.sum() - a_x) + (n - 1) * c_x
    value = (inner_off_diagonal - a_x @ y.rows - b_x @ y.cols + c_x * y.rows.sum()
             - row_u @ a_y - col_u @ b_y + c_y * row_u.sum())
    return float(value)


def u_inner(x, y):
    """<U(X), U(Y)> for two kernels of the same size: n (n - 3) times the unbiased HSIC of
    Song et al. (2012) when X and Y are Gram matrices."""
    inner = _scan(x, y)
    return _u_inner(x.sums, y.sums, inner - float(x.sums.diagonal @ y.sums.diagonal), x.n)


# U(M) counts as zero (CKA undefined) below this share of the off-diagonal energy: float64
# sums leave ~1e-13 of it when M is constant off the diagonal.
UNDEFINED_ENERGY = 1e-10


def _is_defined(kernel):
    sums = kernel.sums
    return np.isfinite(sums.squares) and kernel.norm_squared() > max(EPS ** 2, UNDEFINED_ENERGY * sums.squares)


def u_cka(x, y):
    """Unbiased linear CKA, the cosine between U(X) and U(Y), in one pass over both; NaN
    where either is zero (or missing)."""
    if x is None or y is None or x.n < 4:
        return float("nan")
    value = u_inner(x, y)
    if not (_is_defined(x) and _is_defined(y)):
        return float("nan")
    return value / (x.norm_squared() * y.norm_squared()) ** 0.5


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
    return u_cka(Kernel(kernel_k), Kernel(kernel_l))


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


class _Staging:
    """One float32 buffer on the device that each block of rows is copied into: a fresh
    buffer per block costs more in page faults than the copy itself."""

    def __init__(self, device):
        self.device, self.buffer = device, None

    def __call__(self, rows):
        if self.buffer is None or self.buffer.shape[0] < rows.shape[0]:
            self.buffer = torch.empty(rows.shape, dtype=torch.float32, device=self.device)
        return self.buffer[:rows.shape[0]].copy_(rows)


def column_products(rows_a, rows_b, device, basis_a=None, basis_b=None, chunk_rows=COSINE_CHUNK_ROWS):
    """Accumulate the column statistics of A and B over the same rows, block by block.

    rows_a / rows_b are callables (start, stop) -> float tensor of those shared-token rows,
    so the product never holds two float32 embeddings. basis_a / basis_b (hidden x k) ride
    along: A^T (A basis) costs a thin product on rows that are already loaded.
    """
    thin = lambda block, basis: block.t() @ (block @ basis) if basis is not None else block.new_zeros(block.shape[1], 0)
    stage_a, stage_b = _Staging(device), _Staging(device)
    totals, count = None, 0
    while (raw := rows_a(count, count + chunk_rows)).shape[0]:
        block_a = stage_a(raw)
        block_b = stage_b(rows_b(count, count + chunk_rows))
        del raw                                   # the gathered rows, once staged
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


def principal_axes(sample, count, iterations=2, oversample=8, chunk_rows=COSINE_CHUNK_ROWS):
    """Top `count` principal axes of the centered rows of `sample` (tokens x hidden, float32)
    by blocked subspace iteration, each pass Cov @ Q = X^T (X Q) - n mu (mu^T Q) over blocks of
    rows: the sample is never centered or copied. The axes only need to span the dominant
    directions, so a few passes suffice."""
    total, hidden = sample.shape
    blocks = sample.split(chunk_rows)
    mean = sum(block.sum(0) for block in blocks) / total

    def covariance_times(matrix):
        product = sum(block.t() @ (block @ matrix) for block in blocks)
        return product - total * mean[:, None] * (mean @ matrix)[None, :]

    generator = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(hidden, min(hidden, count + oversample), generator=generator).to(sample.device))[0]
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


def select_kernel(kernel, base_index):
    """A base model's hidden x hidden matrix in the target's dims: K[p_i, p_j] (the signs of the
    alignment stay with the Kernel, not written into the copy)."""
    base_index = base_index.to(kernel.device)
    return kernel.index_select(0, base_index).index_select(1, base_index)


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
