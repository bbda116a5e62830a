"""Column statistics of two embeddings over their shared tokens: the paper's cosine, the
principal axes every column shares, and the residual cosine once those are removed."""
from dataclasses import dataclass

import torch

from awm.method.cka import EPS

COSINE_CHUNK_ROWS = 16384     # shared tokens per block of the embedding cosine


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
