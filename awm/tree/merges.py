"""Which models of one shape class are merges of others, as merge tools make them, and the
words and numbers the family tree gives each: a layer-wise merge (layers copied verbatim from
several models), a weighted average, task arithmetic, coefficients that change from tensor to
tensor (SLERP, layer gradients), or the entrywise signature of TIES and DARE with each parent's
density. The fits themselves live in awm.tree.evidence.
"""
from dataclasses import dataclass, field

from awm.tree import evidence, tensor_types


@dataclass
class MergeParent:
    name: str
    weight: float = None            # a linear coefficient, or a task vector's scale
    change: float = None            # how far the merge's rows lie from this parent's
    density: float = None           # TIES / DARE: the share of this parent's change kept


@dataclass
class FoundMerge:
    quality: float                  # smaller is clearer: the clearest merge of a class is taken first
    parents: list = field(default_factory=list)
    how: str = ""                   # the evidence, in words
    layers: list = None             # a layer-wise merge: each layer's source
    coefficients: list = None       # per-tensor fits: [{"layer", "tensor", "weights"}]
    base: str = None                # the base a TIES / DARE / task-arithmetic merge was built on
    mixed: list = None              # a linear merge's models in its fit's order (a task-arithmetic base first)


def find_merge(space, child, candidates, digest):
    """The child's merge (FoundMerge), or None when no merge explains it clearly better.
    space: the class's RowSpace; digest(name): a model's digest (for layer tracing)."""
    if len(candidates) < 2:
        return None
    layerwise = _layerwise(space, child, candidates, digest)
    if layerwise:
        return layerwise
    fit = evidence.best_merge(space, child, candidates)
    if fit is None:
        return None
    densities = fit.densities or [None] * len(fit.parents)
    coefficients = base = None
    if fit.per_tensor is not None:
        how = (f"structure: per W_q / W_k tensor a weighted sum of its {len(fit.parents)} parents reproduces it, with "
               f"coefficients that change over the layers (SLERP, a layer gradient; see coefficients): the fits leave "
               f"{100 * fit.residual:.3f} % of its weights, the best single parent, {fit.single}, {100 * fit.single_residual:.2f} %")
        coefficients = [{"layer": layer, "tensor": tensor, "weights": dict(zip(fit.parents, map(_rounded, weights)))}
                        for layer, tensor, weights in fit.per_tensor]
    elif fit.method == "task arithmetic":
        how = (f"structure: task arithmetic: {fit.base} plus its parents' changes from it, scaled by "
               f"{' / '.join(f'{w:.2f}' for w in fit.weights)} (see weight); the fit leaves {100 * fit.residual:.3f} % of its "
               f"weights, the best single parent, {fit.single}, {100 * fit.single_residual:.2f} %")
        base = fit.base
    elif fit.weights is not None:
        how = (f"structure: a weighted average of its {len(fit.parents)} parents reproduces it (the fit leaves "
               f"{100 * fit.residual:.3f} % of its weights; the best single parent, {fit.single}, {100 * fit.single_residual:.2f} %)")
    else:
        elected = "signs elected, " if fit.method != "DARE" else ""
        how = (f"structure: each entry of its change from {fit.base} is zero, one parent's change or both mixed "
               f"({fit.method}: {'the largest' if fit.method == 'TIES' else 'random'} entries of each change kept, "
               f"{elected}weights {' / '.join(f'{w:.2f}' for w in fit.entry_weights)}, densities "
               f"{' / '.join(f'{d:.2f}' for d in densities)}; {100 * fit.residual:.1f} % left unexplained beyond storage "
               "rounding): not a linear combination of the models")
        base = fit.base
    weights = [None if w is None else _rounded(w) for w in (fit.weights or fit.entry_weights or [None] * len(fit.parents))]
    parents = [MergeParent(parent, weight, round(space.distance(child, parent), 6), density)
               for parent, weight, density in zip(fit.parents, weights, densities)]
    # Linear fits are ranked by what they leave of the best single parent, entrywise ones by what they leave of the change.
    quality = fit.residual / fit.single_residual if fit.weights is not None else fit.residual
    mixed = (([fit.base] if fit.method == "task arithmetic" else []) + fit.parents) if fit.weights is not None else None
    return FoundMerge(quality, parents, how, coefficients=coefficients, base=base, mixed=mixed)


def weights_by_kind(found, child, sample):
    """{kind of tensor: {parent: weight}} of a linear, SLERP or task-arithmetic merge from the
    weight samples (a task-arithmetic base's own coefficient left out), or None for an entrywise
    merge or where no sample was kept. sample(name): a model's weight sample. Asked once, for a
    merge the tree takes (and its reason says when attention and MLP were mixed apart)."""
    if not found.mixed:
        return None
    own, samples = sample(child), [sample(name) for name in found.mixed]
    if not own or not all(samples):
        return None
    skip = len(found.mixed) - len(found.parents)
    parents = [p.name for p in found.parents]
    by_kind = {kind: None if weights is None else dict(zip(parents, weights[skip:]))
               for kind, weights in tensor_types.weights_by_kind(own, samples).items()} or None
    if by_kind and _kinds_differ(by_kind):
        found.how += "; attention and MLP are mixed with different coefficients (see weights_by_kind)"
    return by_kind


def _kinds_differ(by_kind, margin=0.05):
    attention, mlp = by_kind.get("attention"), by_kind.get("mlp")
    return bool(attention and mlp) and any(abs(attention[p] - mlp[p]) > margin for p in attention)


def _layerwise(space, child, candidates, digest):
    """Different kept layers copied from different candidates: a layer-wise merge, each of
    the child's layers traced to its source through the Grams."""
    nearest = evidence.per_layer_sources(space, child, candidates)
    if len({name for name, _ in nearest}) < 2 or not all(copied for _, copied in nearest):
        return None
    traced = evidence.layer_sources(digest(child), {name: digest(name) for name in candidates})
    layers = evidence.layer_records(traced)
    parents = sorted({name for name, *_ in traced}, key=lambda n: [s for s, *_ in traced].index(n))
    how = (f"structure: its layers are taken from {len(parents)} models (layer by layer, see layers), "
           "each nearly verbatim")
    return FoundMerge(0.0, [MergeParent(parent) for parent in parents], how, layers=layers)


def _rounded(weight):
    return round(float(weight), 4)
