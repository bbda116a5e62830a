"""What two models' shapes say about their lineage before any weight is compared: the shape
class a model belongs to, the structural relation by which one could be upstream of the other
(pruned, upcycled, multimodal, stacked, quantized, adapter), and how far apart two stored copies
of the same weights may lie in their storage precisions.
"""

FULL_PRECISION = ("F64", "F32", "F16", "BF16", "float64", "float32", "float16", "bfloat16")
COPY_DISTANCE = 1e-6                 # rows this close are the same weights as stored
COPY_SCORE = 99.9999                 # and every layer scores this high
# A re-save in another float format rounds every weight by at most half its unit roundoff; rows
# that far apart (relative, as RowSpace measures) are the same weights in another precision.
UNIT_ROUNDOFF = {"F64": 2.0 ** -53, "F32": 2.0 ** -24, "F16": 2.0 ** -11, "BF16": 2.0 ** -8,
                 "float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
# How sure a structural link's direction is. Measured: the weights show the child was made from
# the parent (its layers are the parent's verbatim, its weights are the parent's rounded to fewer
# bits, a low-rank update of the parent). Inferred: a prior about shapes (models are pruned more
# often than grown, towers and experts added more often than removed), not a measurement.
STRUCTURE_CONFIDENCE = {"stacked": "measured", "merge": "measured", "quantized": "measured", "adapter": "measured",
                        "pruned": "inferred", "upcycled": "inferred", "multimodal": "inferred"}
WIDTH = ("hidden_size", "num_heads", "num_kv_heads", "head_dim")
BODY = (*WIDTH, "num_layers")        # same body: the rows of every kept layer have the same shapes


def is_quantized(meta):
    return str(meta.get("dtype")) not in FULL_PRECISION


def structure_confidence(relation):
    return STRUCTURE_CONFIDENCE.get(relation, "inferred")


def shape_key(meta):
    return (meta["hidden_size"], meta["num_layers"], meta["num_heads"], meta["num_kv_heads"], meta["head_dim"],
            meta.get("experts") or 0, tuple(meta.get("modalities") or ("text",)), is_quantized(meta), bool(meta.get("adapter")))


def structural_relation(child, parent):
    """The relation by which `parent` could be upstream of `child` from their structure alone
    (None: structure does not say), with the evidence in words. One step changes one thing: a
    tower, experts, the width, the depth or the storage; a pair that differs in two of them (a
    multimodal model beside a deeper copy of the same base) is not parent and child."""
    same_width = all(child[k] == parent[k] for k in WIDTH)
    same_body = same_width and child["num_layers"] == parent["num_layers"]
    same_experts, same_modalities = _experts(child) == _experts(parent), _modalities(child) == _modalities(parent)
    same_kind = same_experts and same_modalities
    extra = [m for m in _modalities(child) if m not in _modalities(parent)]
    if extra:
        if not (same_body and same_experts):
            return None
        return "multimodal", f"it adds a {' and '.join(extra)} tower to the language model"
    if _experts(child) > 1 and not _experts(parent):
        if not (same_body and same_modalities):
            return None
        return "upcycled", f"it is a mixture of {child['experts']} experts, its parent dense"
    if not same_kind:
        return None
    if all(child[k] <= parent[k] for k in WIDTH) and any(child[k] < parent[k] for k in WIDTH):
        return "pruned", (f"it is narrower ({child['hidden_size']} vs {parent['hidden_size']} hidden dims, " \
                         f"{child['num_heads']} vs {parent['num_heads']} heads)")
    if same_width:
        if child["num_layers"] < parent["num_layers"]:
            return "pruned", f"it is shallower ({child['num_layers']} vs {parent['num_layers']} layers)"
        if child["num_layers"] > parent["num_layers"]:
            return "stacked", f"it is deeper ({child['num_layers']} vs {parent['num_layers']} layers)"
        if is_quantized(child) and not is_quantized(parent):
            return "quantized", f"it is stored as {child['dtype']}, its parent at full precision ({parent['dtype']})"
        if child.get("adapter") and not parent.get("adapter") and (_is_base_of(child["adapter"], parent) or not is_quantized(parent)):
            adapter = child["adapter"]
            return "adapter", f"it is a LoRA adapter (rank {adapter.get('rank')}) merged into a base model ({adapter.get('base')})"
    return None


def _experts(meta):
    return meta.get("experts") or 0


def _modalities(meta):
    return tuple(meta.get("modalities") or ("text",))


def _is_base_of(adapter, meta):
    return bool(adapter.get("base")) and adapter["base"] in (meta.get("path"), meta.get("name"))


def copy_tolerance(meta_a, meta_b):
    """How far apart two stored copies of the same weights may lie: half the coarser unit
    roundoff of their storage precisions (at least COPY_DISTANCE)."""
    coarser = max(UNIT_ROUNDOFF.get(str(m.get("dtype")), 0.0) for m in (meta_a, meta_b))
    return max(COPY_DISTANCE, coarser / 2)


def copy_score(tolerance):
    """The layer score two copies reach: CKA falls short of 1 by about the square of the relative
    change, so a rounding of `tolerance` leaves at least this (COPY_SCORE at full precision)."""
    return min(COPY_SCORE, 100 * (1 - 4 * tolerance ** 2))
