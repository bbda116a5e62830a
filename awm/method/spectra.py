"""Normalised log singular-value spectra of weight matrices and distances between two models'
per-layer spectra: summaries that no change of the residual basis can move."""
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

NEGLIGIBLE = float(np.log(1e-3))   # singular values below this fraction of the largest are left out


def top_singular_values(matrix, count, symmetric):
    """The largest `count` singular values (a PSD Gram: its eigenvalues' square roots, those of W),
    by randomized subspace iteration when the matrix is wide."""
    matrix = matrix.float()
    size = matrix.shape[0]
    if size <= 2 * count:
        values = torch.linalg.eigvalsh(matrix).clamp_min(0).sqrt().flip(0) if symmetric else torch.linalg.svdvals(matrix)
        return values[:count]
    probe = torch.randn(size, count + 8, generator=torch.Generator().manual_seed(0)).to(matrix.device)
    basis = torch.linalg.qr(matrix @ probe)[0]
    for _ in range(3):
        basis = torch.linalg.qr(matrix @ (matrix.t() @ basis))[0]
    values = torch.linalg.svdvals(basis.t() @ matrix)[:count]
    return values.clamp_min(0).sqrt() if symmetric else values


def normalised_log_spectrum(matrix, values, symmetric):
    """(values,) normalised log singular values of one matrix: the top quarter of its spectrum
    at most, above 1e-3 of the largest (NaN beyond, and for a missing matrix). The tail of a
    square matrix's spectrum sits near zero and the values past a matrix's rank are rounding
    noise: any change moves their logarithms, so they say nothing."""
    spectrum = torch.full((values,), float("nan"))
    if matrix is None:
        return spectrum
    count = min(values, max(1, matrix.shape[0] // 4))
    kept = top_singular_values(matrix, count, symmetric).double().cpu().clamp_min(1e-30)
    logs = kept.log() - kept[0].log()
    logs[logs < NEGLIGIBLE] = float("nan")
    spectrum[:len(kept)] = logs.float()
    return spectrum


def layer_gaps(differences):
    """Mean |difference| over the defined values of the last axis; inf where none is defined."""
    defined = ~np.isnan(differences)
    counts = defined.sum(-1)
    gaps = np.where(defined, differences, 0.0).sum(-1) / np.maximum(counts, 1)
    gaps[counts == 0] = np.inf
    return gaps


def same_depth_distances(stacked, own):
    """body distance of each of the stacked (k, layers, 3, SPECTRUM) spectra to own, layer i with i."""
    gaps = layer_gaps(np.abs(stacked - own[None]))          # (k, layers, kinds)
    return gaps.mean(1).min(1)


def body_distance(spectra_a, spectra_b):
    """For the kind of matrix whose spectra agree best (W_q, W_k or the circuit: a disguise may
    change the first two and never the third), the mean |difference| of the normalised log
    spectra over matched layers (equal depth: layer i with i; else the assignment of smallest
    total difference)."""
    if len(spectra_a) == len(spectra_b):
        return same_depth_distances(spectra_a[None], spectra_b)[0]
    best = np.inf
    for kind in range(spectra_a.shape[1]):
        gaps = layer_gaps(np.abs(spectra_a[:, None, kind] - spectra_b[None, :, kind]))
        if np.isfinite(gaps).any():
            rows, cols = linear_sum_assignment(np.where(np.isfinite(gaps), gaps, 1e9))
            best = min(best, float(gaps[rows, cols].mean()))
    return best


def ordered_distance(spectra_a, spectra_b):
    """Mean |difference| of the normalised log spectra (layers, 1, values) of two models of
    different depth, each layer of the shallower matched to its own layer of the deeper in the
    same order (what dropping layers, keeping every other layer or stacking copies leaves), the
    order chosen to make the total smallest (dynamic programming over both depths)."""
    short, long = (spectra_a, spectra_b) if len(spectra_a) <= len(spectra_b) else (spectra_b, spectra_a)
    gaps = layer_gaps(np.abs(short[:, None, 0] - long[None, :, 0]))        # (short, long)
    gaps = np.where(np.isfinite(gaps), gaps, 1e9)
    best = np.zeros(len(long) + 1)            # best[j]: the layers matched so far, within long's first j
    for i, row in enumerate(gaps):
        extend = np.full(len(long) + 1, np.inf)
        extend[1:] = best[:-1] + row
        extend[:i + 1] = np.inf               # i + 1 layers need i + 1 distinct partners
        best = np.minimum.accumulate(extend)
    return float(best[-1] / len(short))
