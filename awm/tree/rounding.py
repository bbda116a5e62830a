"""Fitting a merge's weights through storage rounding. Parents a few per cent apart differ by
one or two units of bf16 in most entries; a merge saved in bf16 then rounds to the nearer
parent's value there, and a least-squares fit over every entry leans toward that parent
(0.58 for 0.55). Entries where the parents lie many units apart carry the weights; rounding
moves them by a small fraction of that spread.
"""
import numpy as np
import torch

from awm.tree.copies import MANTISSA_BITS, unit

SEPARATED_UNITS = 8          # parents this many units of the child's format apart carry the fit
MIN_SEPARATED = 64           # fewer such entries than this: every entry is used


def bits_of(dtype):
    """Mantissa bits of a storage dtype (None for formats without units)."""
    return MANTISSA_BITS.get(str(dtype).removeprefix("torch."))


def separated(columns, bits):
    """Entries where some two parents (columns: one 1-D float64 tensor each) differ by at least
    SEPARATED_UNITS units of a `bits` format at their magnitude."""
    stacked = torch.stack(columns)
    spread = stacked.amax(0) - stacked.amin(0)
    return spread >= SEPARATED_UNITS * unit(stacked.abs().amax(0), bits)


def least_squares(target, columns, bits):
    """Weights of target ~ sum_k w_k column_k (1-D float64 tensors), on the separated entries
    when the target is stored in fewer bits than float32 and enough of them exist."""
    if bits is not None and bits < 23:
        keep = separated(columns, bits)
        if int(keep.sum()) >= MIN_SEPARATED:
            target, columns = target[keep], [c[keep] for c in columns]
    x = torch.stack(columns, dim=1).numpy()
    return np.linalg.lstsq(x, target.numpy(), rcond=None)[0]
