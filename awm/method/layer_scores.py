"""Steps 3 to 5 of the method: the alignment applied to the base's kernels, unbiased CKA of
every matched layer pair, and the scores as means over the layer map.

Besides the paper's W_q / W_k CKAs and the QK circuit, the same CKAs with each model's common
embedding directions projected out of its kernels (the residual metrics) serve the verdict.
"""
import numpy as np
import torch
from tqdm import tqdm

from awm.method import cka
from awm.method.assignment import match_layers

# Residual metrics: the same CKAs after each model's common embedding directions are
# projected out of its kernels (docs/method.md, the verdict). Aligned metrics: the same CKAs
# under another witness's alignment (an embedding rotation, the body's pairing), when the
# paper's own alignment has no basis.
METRICS = ("wq", "wk", "qk_circuit", "wq_residual", "wk_residual", "qk_circuit_residual",
           "wq_aligned", "wk_aligned", "qk_circuit_aligned")
PLAIN, RESIDUAL, ALIGNED = "plain", "residual", "aligned"
GROUPS = (PLAIN, RESIDUAL, ALIGNED)
GROUP_ROWS = {PLAIN: slice(0, 3), RESIDUAL: slice(3, 6), ALIGNED: slice(6, 9)}


def _in_target_dims(matrix, alignment):
    """A base matrix under an alignment: a pairing stays lazy (cka.Kernel gathers it), a dense
    map is applied, T^T M T."""
    if alignment.map is None:
        return matrix, alignment.base_index, alignment.sign
    rotation = alignment.map.to(device=matrix.device, dtype=torch.float32)
    return (rotation.t() @ matrix.float()) @ rotation, None, None


def _prepared_kernels(kernels, alignments, is_base, groups):
    """The layer's matrices in METRICS order as cka.Kernel (None for a group not asked for):
    the base's in target dims under each group's alignment. A generator: a residual or mapped
    copy exists only while it is used, so a layer never holds all of them at once.
    alignments: {group: Alignment}, the residual group using the plain group's."""
    # The Grams are exactly symmetric (cka.gram mirrors its upper triangle); the circuit is not,
    # nor is a projected or mapped copy, whose products round differently.
    matrices = ((kernels.query, True), (kernels.key, True), (kernels.circuit, False))

    def prepare(matrix, group, symmetric):
        alignment = alignments.get(PLAIN if group == RESIDUAL else group)
        if matrix is None or alignment is None:
            return None
        if group == RESIDUAL:
            common = alignment.base_common if is_base else alignment.target_common
            if common is None:
                return None
            matrix, symmetric = cka.project_out(matrix.clone(), common), False
        if not (is_base and alignment.aligned):
            return cka.Kernel(matrix, symmetric=symmetric)   # read only: the digest may keep it for other pairs
        matrix, index, sign = _in_target_dims(matrix, alignment)
        return cka.Kernel(matrix, index, sign, symmetric and index is not None)

    for group in GROUPS:
        for matrix, symmetric in matrices:
            yield prepare(matrix, group, symmetric) if group in groups else None


def layer_values(base_kernels, target_kernels, alignments, groups):
    """CKA of one layer pair for every metric of the groups asked for (NaN for the others)."""
    return [cka.u_cka(b, t) for b, t in zip(_prepared_kernels(base_kernels, alignments, True, groups),
                                            _prepared_kernels(target_kernels, alignments, False, groups))]


def layer_similarities(base, target, alignments, progress=True, groups=(PLAIN,), observe=None):
    """Similarity arrays (len(METRICS), base layers, target layers); NaN where a pair or a
    metric was not computed (only the metric groups asked for are).

    Equal depth compares layer i with layer i only. Different depth needs every pair: the
    shallower model's prepared kernels are kept while the deeper model streams past them.
    observe(digest, index, kernels), when given, sees every layer of both models once.
    """
    look = observe or (lambda digest, index, kernels: None)

    def layer(digest, index):
        kernels = digest.layer(index)
        look(digest, index, kernels)
        return kernels

    sims = np.full((len(METRICS), base.num_layers, target.num_layers), np.nan)
    bar = dict(disable=None if progress else True, leave=False, unit="layer")
    if base.num_layers == target.num_layers:
        for i in tqdm(range(base.num_layers), desc="layers", **bar):
            sims[:, i, i] = layer_values(layer(base, i), layer(target, i), alignments, groups)
        return sims
    base_is_shallow = base.num_layers < target.num_layers
    shallow, deep = (base, target) if base_is_shallow else (target, base)
    kept = [[k if k is None else k.selected() for k in _prepared_kernels(layer(shallow, i), alignments, base_is_shallow, groups)]
            for i in tqdm(range(shallow.num_layers), desc="layers (shallower model)", **bar)]
    for j in tqdm(range(deep.num_layers), desc="layers (deeper model)", **bar):
        deep_kernels = list(_prepared_kernels(layer(deep, j), alignments, not base_is_shallow, groups))
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
    scores on the same maps, so they differ from the plain ones only by what was projected out.
    The aligned scores rest on another alignment, so they get layer maps of their own."""
    q, k, circuit = sims[GROUP_ROWS[PLAIN]]
    paper_map = match_layers((q + k) / 2)
    circuit_map = match_layers(circuit)
    scores = _scores_on_maps(q, k, circuit, paper_map, circuit_map)
    residual = _scores_on_maps(*sims[GROUP_ROWS[RESIDUAL]], paper_map, circuit_map)
    q, k, circuit = sims[GROUP_ROWS[ALIGNED]]
    aligned = _scores_on_maps(q, k, circuit, match_layers((q + k) / 2), match_layers(circuit))
    return scores, residual, aligned, paper_map, circuit_map
