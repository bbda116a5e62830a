"""Steps 3 to 5 of the method: the alignment applied to the base's kernels, unbiased CKA of
every matched layer pair, and the scores as means over the layer map.

Besides the paper's W_q / W_k CKAs and the QK circuit, the same CKAs with each model's common
embedding directions projected out of its kernels (the residual metrics) serve the verdict.
"""
import numpy as np
from tqdm import tqdm

from awm import cka
from awm.assignment import match_layers

# Residual metrics: the same CKAs after each model's common embedding directions are
# projected out of its kernels (docs/method.md, the verdict).
METRICS = ("wq", "wk", "qk_circuit", "wq_residual", "wk_residual", "qk_circuit_residual")


PLAIN, RESIDUAL = "plain", "residual"


def _prepared_kernels(kernels, alignment, is_base, groups):
    """The layer's matrices in METRICS order as cka.Kernel (None for a group not asked for):
    the base's in target dims, with the alignment's signs. A generator: a residual copy
    exists only while it is used, so a layer never holds all of them at once."""
    # The Grams are exactly symmetric (cka.gram mirrors its upper triangle); the circuit is not,
    # nor is a projected copy, whose two products round differently.
    matrices = ((kernels.query, True), (kernels.key, True), (kernels.circuit, False))
    common = alignment.base_common if is_base else alignment.target_common

    def prepare(matrix, is_residual, symmetric):
        if matrix is None or (is_residual and common is None):
            return None
        if is_residual:
            matrix, symmetric = cka.project_out(matrix.clone(), common), False
        if is_base and alignment.aligned:
            return cka.Kernel(matrix, alignment.base_index, alignment.sign, symmetric)
        return cka.Kernel(matrix, symmetric=symmetric)       # read only: the digest may keep it for other pairs

    for group in (PLAIN, RESIDUAL):
        for matrix, symmetric in matrices:
            yield prepare(matrix, group == RESIDUAL, symmetric) if group in groups else None


def layer_values(base_kernels, target_kernels, alignment, groups):
    """CKA of one layer pair for every metric of the groups asked for (NaN for the others)."""
    return [cka.u_cka(b, t) for b, t in zip(_prepared_kernels(base_kernels, alignment, True, groups),
                                            _prepared_kernels(target_kernels, alignment, False, groups))]


def layer_similarities(base, target, alignment, progress=True, groups=(PLAIN,)):
    """Similarity arrays (len(METRICS), base layers, target layers); NaN where a pair or a
    metric was not computed (only the metric groups asked for are).

    Equal depth compares layer i with layer i only. Different depth needs every pair: the
    shallower model's prepared kernels are kept while the deeper model streams past them.
    """
    sims = np.full((len(METRICS), base.num_layers, target.num_layers), np.nan)
    bar = dict(disable=None if progress else True, leave=False, unit="layer")
    if base.num_layers == target.num_layers:
        for i in tqdm(range(base.num_layers), desc="layers", **bar):
            sims[:, i, i] = layer_values(base.layer(i), target.layer(i), alignment, groups)
        return sims
    base_is_shallow = base.num_layers < target.num_layers
    shallow, deep = (base, target) if base_is_shallow else (target, base)
    kept = [[k if k is None else k.selected() for k in _prepared_kernels(shallow.layer(i), alignment, base_is_shallow, groups)]
            for i in tqdm(range(shallow.num_layers), desc="layers (shallower model)", **bar)]
    for j in tqdm(range(deep.num_layers), desc="layers (deeper model)", **bar):
        deep_kernels = list(_prepared_kernels(deep.layer(j), alignment, not base_is_shallow, groups))
        for i, shallow_kernels in enumerate(kept):
            values = [cka.u_cka(s, d) for s, d in zip(shallow_kernels, deep_kernels)]
            if base_is_shallow:
                sims[:, i, j] = values
            else:
                sims[:, j, i] = values
    return sims


def _mean(values):
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _scores_on_maps(q, k, circuit, paper_map, circuit_map):
    wq = _mean(q[i, j] for i, j in paper_map)
    wk = _mean(k[i, j] for i, j in paper_map)
    return {"wq": wq, "wk": wk, "final": _mean([wq, wk]), "qk_circuit": _mean(circuit[i, j] for i, j in circuit_map)}


def score_layers(sims):
    """Paper scores on the paper's layer map, the circuit score on its own map; the residual
    scores on the same maps, so they differ from the plain ones only by what was projected out."""
    q, k, circuit = sims[:3]
    paper_map = match_layers((q + k) / 2)
    circuit_map = match_layers(circuit)
    scores = _scores_on_maps(q, k, circuit, paper_map, circuit_map)
    residual = _scores_on_maps(*sims[3:], paper_map, circuit_map)
    return scores, residual, paper_map, circuit_map


GROUP_ROWS = {PLAIN: slice(0, 3), RESIDUAL: slice(3, 6)}
