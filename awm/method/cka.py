"""Unbiased linear CKA between hidden x hidden kernels, without forming centered copies.

Conventions: a weight matrix W is (out_features, hidden). AWM's samples are the hidden
dimensions and its features the output rows, so the linear kernel of W is the Gram matrix
K = W^T W over hidden dims. All functions take and return torch tensors on any device.
"""
from dataclasses import dataclass

import numpy as np
import torch

GRAM_BLOCK = 512              # column block of the symmetric Gram product
EPS = 1e-12


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



def project_out(kernel, basis):
    """(I - B B^T) K (I - B B^T) for an orthonormal basis B of a few columns, in place."""
    basis = basis.to(device=kernel.device, dtype=kernel.dtype)
    kernel.addmm_(basis, basis.t() @ kernel, alpha=-1.0)
    kernel.addmm_(kernel @ basis, basis.t(), alpha=-1.0)
    return kernel



def select_kernel(kernel, base_index):
    """A base model's hidden x hidden matrix in the target's dims: K[p_i, p_j] (the signs of the
    alignment stay with the Kernel, not written into the copy)."""
    base_index = base_index.to(kernel.device)
    return kernel.index_select(0, base_index).index_select(1, base_index)

