"""The mathematics of AWM: unbiased linear CKA, hidden-dimension alignment, layer matching.

Conventions: a weight matrix W is (out_features, hidden). AWM's samples are the hidden
dimensions and its features the output rows, so the linear kernel of W is the Gram matrix
K = W^T W over hidden dims. All functions take and return torch tensors on any device.
"""
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

COSINE_CHUNK_ROWS = 16384     # shared tokens per block of the embedding cosine
GRAM_BLOCK = 512              # column block of the symmetric Gram product
EPS = 1e-12


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
def column_cosine(rows_a, rows_b, device, chunk_rows=COSINE_CHUNK_ROWS):
    """Cosine between every column of A and every column of B over the same rows.

    rows_a / rows_b are callables (start, stop) -> float tensor of those shared-token rows,
    so the product is accumulated block by block and never holds two float32 embeddings.
    """
    cross = norms_a = norms_b = None
    start = 0
    while True:
        block_a, block_b = rows_a(start, start + chunk_rows), rows_b(start, start + chunk_rows)
        if block_a.shape[0] == 0:
            break
        block_a = block_a.to(device=device, dtype=torch.float32)
        block_b = block_b.to(device=device, dtype=torch.float32)
        if cross is None:
            cross = torch.zeros(block_a.shape[1], block_b.shape[1], dtype=torch.float32, device=device)
            norms_a = torch.zeros(block_a.shape[1], dtype=torch.float32, device=device)
            norms_b = torch.zeros(block_b.shape[1], dtype=torch.float32, device=device)
        cross += block_a.t() @ block_b
        norms_a += (block_a * block_a).sum(0)
        norms_b += (block_b * block_b).sum(0)
        start += chunk_rows
    if cross is None:
        raise ValueError("no shared rows")
    return cross / torch.outer(norms_a.sqrt().clamp_min(EPS), norms_b.sqrt().clamp_min(EPS))


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
