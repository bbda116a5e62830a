"""The family tree's copies: each quantized model under the float model it was made from, and
stored copies of one float model (re-saves in another precision, the same files twice) under
one of them, so that the rest of the tree links to that one. Two copies of one model are
siblings under it, never each other's fine-tune; there is no limit on how many.
"""
from awm.tree import copies, direction, evidence, hub_cards
from awm.tree.lineage import Groups
from awm.tree.links import Link, Unsettled
from awm.tree.structure import BODY, copy_tolerance, structural_relation
from awm.witnesses.body_rows import row_layers

# A quantized copy's rounding hides a change this small beside it: a float model whose rows lie
# at most this many times farther from the copy than the nearest one's is as close, by the weights.
QUANTIZED_TIE = 1.1
SAMPLE_MARGIN = 0.5          # ... then its other weights decide: no farther in any tensor, at most half as far in some


class CopyLinks:
    """The copy steps of awm.tree.build.TreeBuilder (which provides family, metas, pairs, tree,
    digest, _distance and _relations)."""

    def _link_quantized_copies(self):
        """Each quantized model with a float model of its body in the family goes under the float
        model it was made from, the nearest in weights; two copies of one model are siblings.
        Returns the copies linked."""
        linked = set()
        for child in self.family:
            floats = [m for m in self.family if self.pairs.derived(child, m)
                      and (structural_relation(self.metas[child], self.metas[m]) or ("",))[0] == "quantized"]
            if floats:
                self.tree.links.append(self._quantized_link(child, floats))
                linked.add(child)
        return linked

    def _quantized_link(self, child, floats):
        """The link from the float model a quantized copy was made from: the nearest by W_q / W_k,
        then by its other weights; where the weights cannot tell two apart, the one its metadata
        names (a claim, said so), else the nearest, inferred."""
        layers = row_layers(self.metas[child]["num_layers"])
        distance = {m: (evidence.gram_distance(self.digest(child), self.digest(m), layers), -self.pairs.similarity(child, m))
                    for m in floats}
        ranked = sorted(floats, key=lambda m: distance[m])
        nearest, measure = ranked[0], distance[ranked[0]]
        tied = [m for m in ranked[1:] if _within(distance[m], measure, QUANTIZED_TIE)]
        told = self._nearest_by_sample(child, [nearest, *tied]) if tied else None
        if told is not None:
            nearest, tied = told, []
            why_nearest = "nearest by its other weights; by W_q / W_k as near as " + \
                ", ".join(m for m in ranked if m != told and _within(distance[m], measure, QUANTIZED_TIE))
        declared = [m for m in floats if hub_cards.names_as_base(self.metas[child], m, self.metas[m])]
        _, why = structural_relation(self.metas[child], self.metas[nearest])
        apart = _apart(distance[nearest]) if told is None else why_nearest
        if declared and tied and declared[0] in (nearest, *tied):
            claim = declared[0]
            return Link(claim, child, "quantized", (
                f"metadata: {child} names {claim} as its base (a claim); the weights agree but cannot tell it from "
                f"{', '.join(m for m in (nearest, *tied) if m != claim)} ({_apart(distance[claim])})"), confidence="claim")
        said = "" if not declared else f"; its metadata names {declared[0]} too" if declared[0] == nearest else \
            f"; its metadata names {declared[0]}, which the weights do not confirm ({_apart(distance[declared[0]])})"
        if tied:
            return Link(nearest, child, "quantized", (
                f"structure: quantized: {why}; the nearest float model ({apart}), but {', '.join(tied)} "
                f"{'is' if len(tied) == 1 else 'are'} as near: its rounding hides which{said}"), confidence="inferred")
        return Link(nearest, child, "quantized", f"structure: quantized: {why}; the nearest float model ({apart}){said}",
                    confidence="measured")

    def _nearest_by_sample(self, child, tied):
        """Of float models equally near a quantized copy by W_q / W_k (an abliteration, an MLP-only
        LoRA beside its base), the one its other weights are nearest in every sampled tensor and
        clearly nearest in some, or None."""
        own = self.sample(child)
        apart = {m: copies.sample_distances(own, self.sample(m)) for m in tied}
        found = [m for m in tied if all(copies.nearer_in_every_tensor(apart[m], apart[o], SAMPLE_MARGIN) for o in tied if o != m)]
        return found[0] if found else None

    def _link_copies(self, members, space):
        """Stored copies of one model (every compared weight the same within its storage
        precision) are linked under one of them, the original where the bits show it, and leave
        the class: the rest of the tree links to that one. Returns the members left."""
        groups = Groups(members)
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if self.pairs.derived(a, b) and self._same_shape_relation(a, b, self._distance(space, a, b))[0] == "copy":
                    groups.join(a, b)
        kept = []
        for group in groups.groups():
            finest = max(group, key=lambda m: copies.MANTISSA_BITS.get(str(self.metas[m].get("dtype")), 0))
            kept.append(finest)
            for other in group:
                if other != finest:
                    self._link_copy(finest, other)
        return [m for m in members if m in kept]

    def _link_copy(self, finest, other):
        dtypes = self.metas[finest].get("dtype"), self.metas[other].get("dtype")
        original = copies.finer_original(self.digest(finest), self.digest(other), *dtypes)
        _, note = self._same_shape_relation(finest, other, 0.0)
        note = f" ({note})" if note else ""
        if original is None:
            self.tree.undirected.append(Unsettled(finest, other, "copy", direction.COPY + note))
            return
        self.tree.links.append(Link(finest, other, "copy", (
            f"structure: copy: the same weights re-saved from {dtypes[0]} to {dtypes[1]}: {finest} holds values {dtypes[1]} "
            f"cannot store, so it is the original{note}"), None, 0.0, confidence="measured"))

    def _same_shape_relation(self, a, b, distance):
        """(relation, note): "copy" only when every compared weight is the same within its storage
        precision (awm.tree.copies), W_q / W_k rows and a sample of the others; else "fine-tune",
        noted when W_q / W_k alone are the same. Rows farther apart than a re-save's rounding
        are a fine-tune without reading any sample."""
        key = frozenset((a, b))
        if key not in self._relations:
            found = "fine-tune", None
            if distance <= copy_tolerance(self.metas[a], self.metas[b]) and self.pairs.shared_basis(a, b) \
                    and all(self.metas[a][k] == self.metas[b][k] for k in BODY):
                found = copies.relation(self.digest(a), self.digest(b), self.metas[a].get("dtype"), self.metas[b].get("dtype"))
            self._relations[key] = found
        return self._relations[key]


def _within(measure, nearest, ratio):
    """A (Gram distance, -similarity) measure as near as `nearest`, to `ratio` (scores: to 0.1 points)."""
    if measure[0] < float("inf") and nearest[0] < float("inf"):
        return measure[0] <= ratio * nearest[0]
    return measure[1] <= nearest[1] + 0.1


def _apart(measure):
    distance, similarity = measure
    return f"W_q / W_k Grams {100 * distance:.3g} % apart" if distance < float("inf") else f"similarity {-similarity:.2f} %"
