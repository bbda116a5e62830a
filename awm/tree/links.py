"""The family tree's records: a directed link (parent, child, relation, the evidence and how sure
its direction is), an undirected pair with the reason, and the tree as lineage.json holds it."""
from dataclasses import dataclass, field

from awm.tree import hub_cards

CONFIDENCES = ("measured", "claim", "inferred", "undirected")      # docs/library.md says what each means


@dataclass
class Link:
    parent: str
    child: str
    relation: str
    direction: str
    weight: float = None
    change: float = None
    density: float = None            # a TIES / DARE merge: the share of this parent's change kept
    confidence: str = None           # what the direction rests on: measured, claim or inferred (docs/library.md)


@dataclass
class Unsettled:
    a: str
    b: str
    relation: str
    reason: str


@dataclass
class FamilyTree:
    links: list = field(default_factory=list)
    undirected: list = field(default_factory=list)
    layers: dict = field(default_factory=dict)          # child -> [{"layer", "source", "source_layer", "score"}]
    coefficients: dict = field(default_factory=dict)    # merge child -> [{"layer", "tensor", "weights": {parent: w}}]
    weights_by_kind: dict = field(default_factory=dict)  # merge child -> {"attention" / "mlp" / ...: {parent: w}}


def record_tree(names, tree, pairs, not_compared, metas):
    """The tree as lineage.json holds it: every edge with its confidence."""
    parents = {name: [] for name in names}
    for link in tree.links:
        awm, circuit = pairs.scores(link.parent, link.child)
        parents[link.child].append({"name": link.parent, "relation": link.relation, "weight": link.weight,
                                    "direction": link.direction, "confidence": link.confidence, "awm": awm, "qk_circuit": circuit,
                                    "change": link.change, "density": link.density})
    return {
        "nodes": [{"name": name, "parents": parents[name], "layers": tree.layers.get(name), "coefficients": tree.coefficients.get(name),
                   "weights_by_kind": tree.weights_by_kind.get(name),
                   "hub": hub_cards.declared_base(parents[name], lambda n: hub_cards.hub_repo(metas.get(n)) or n)} for name in names],
        "undirected": [{"a": u.a, "b": u.b, "relation": u.relation, "reason": u.reason, "confidence": "undirected"}
                       for u in tree.undirected],
        "not_compared": [{"name": name, "reason": reason} for name, reason in not_compared],
    }
