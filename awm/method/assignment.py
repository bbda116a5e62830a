"""Linear assignments of the method: hidden dims by embedding cosine, layers by similarity."""
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


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
