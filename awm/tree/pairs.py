"""A family's scored pair records, looked up by name in either order: whether two models are
derived, share their hidden basis, their scores and their per-layer scores, as the family tree
reads them.
"""
from awm.witnesses.verdict import is_derived

SHARED_BASIS = 0.95                  # share of dims an alignment maps to themselves when two models share a basis


class Pairs:
    """The scored pair records, looked up in either order."""

    def __init__(self, records):
        self.records = {}
        for record in records:
            a, b = record["model_a"]["name"], record["model_b"]["name"]
            self.records[(a, b)] = self.records[(b, a)] = record

    def get(self, a, b):
        return self.records.get((a, b))

    def derived(self, a, b):
        record = self.get(a, b)
        return record is not None and is_derived(record["verdict"])

    def shared_basis(self, a, b):
        """The pair's alignment maps (nearly) every dim to itself: their rows can be compared as
        stored (a swapped dim or two in the assignment does not change the basis)."""
        record = self.get(a, b)
        alignment = (record or {}).get("evidence", {}).get("alignment", {})
        return bool(alignment.get("stored_order")) or (alignment.get("identity_fraction") or 0.0) >= SHARED_BASIS

    def scores(self, a, b):
        """(AWM %, QK-circuit %) under the alignment the verdict rests on."""
        record = self.get(a, b)
        scores = record.get("aligned_scores") or record["scores"]
        return scores.get("final"), scores.get("qk_circuit")

    def share_embedding(self, a, b):
        record = self.get(a, b)
        return record is not None and (record.get("inheritance") or {}).get("embedding") == "shared"

    def similarity(self, a, b):
        awm, circuit = self.scores(a, b)
        return max(v for v in (awm, circuit, -1.0) if v is not None)

    def layer_scores(self, child, parent):
        """Per layer of `child` its W_q / W_k CKA with the same layer of `parent` (equal depth)."""
        record = self.get(child, parent)
        child_is_a = record["model_a"]["name"] == child
        return {(layer["layer_a"] if child_is_a else layer["layer_b"]): min(layer["wq"] or 0.0, layer["wk"] or 0.0)
                for layer in record["layers"]}
