"""Which way the edges of one shape class point, each from evidence about that edge.

Models of one shape are linked by the smallest weight changes; nothing in a weight change says
which end came first. A direction is given only where something about the edge, or a model's
one parent, decides it, and each directed edge carries its reason:

1. Evidence about the edge itself: a model whose parent lies in another shape class (it is where
   the class was entered, by structure) has its parent already; a TIES / DARE merge names the
   base its parents' changes were taken from; a model's config or model card names the other
   end as its base (a claim, said so).
2. One parent: a model whose parent is known has every other neighbour as a child.
Edges nothing decides stay undirected, with the reason: never a coin flip presented as a fact.
How many models branch from one says nothing about which way its edges point: an instruct model
with ten fine-tunes may itself be the child of the base beside it, and the middle of a chain of
continued pre-training with three fine-tunes is not its root.

The smallest weight changes link siblings trained on similar data in a chain: each one's change
shares a little with the others', so a light sibling sits slightly nearer the strong ones than
their parent does. Once directions are known, a chain parent -> middle -> child is kept only if
the child keeps the middle's change (`untangle`); one that moves back toward the parent branches
from the parent beside the middle.
"""
from collections import deque
from dataclasses import dataclass, field

COPY = "the same weights as stored: nothing in them tells which is the original"
# Cosine of the angle at the middle of a chain above which its child moves back toward the
# grandparent: a chain's child keeps the middle's change. Measured on a family trained from
# SmolLM2 (the rows the library keeps): real chains -0.005 to 0.029; siblings trained on one
# corpus that the smallest changes chained, 0.072 to 0.178 (and -0.05 to 0.04 where a much
# stronger sibling looks like continued training: those stay chained).
SIBLING_TURN = 0.05
NOTHING_DECIDES = ("same shape and nothing decides which came first: no structural change, no merge built on it, no "
                   "metadata claim, no known parent on either side (a weight change reads the same from both ends)")
# What each kind of evidence makes of a direction (the reason's first words name the kind).
CONFIDENCE = {"structure": "measured", "metadata": "claim", "one parent": "inferred", "siblings": "inferred"}


@dataclass
class Edge:
    a: str
    b: str
    distance: float
    relation: str                  # "fine-tune" or "copy" (copies are never directed)
    note: str = None               # what the relation rests on, when it needs saying (W_q / W_k alone the same)

    def other(self, name):
        return self.b if name == self.a else self.a


@dataclass
class Directions:
    directed: list = field(default_factory=list)      # (parent, child, edge, reason)
    undirected: list = field(default_factory=list)    # (edge, reason)


@dataclass
class Evidence:
    """What is known before the tree's shape is read: models whose parent is elsewhere
    ({name: reason}) and claims about single edges ([(parent, child, reason)])."""
    parent_elsewhere: dict = field(default_factory=dict)
    edge_claims: list = field(default_factory=list)


def confidence_of(reason):
    """measured, claim or inferred: what kind of evidence a direction's reason names."""
    return next((level for kind, level in CONFIDENCE.items() if reason.startswith(kind + ":")), "inferred")


def orient(edges, evidence):
    """Directions for a shape class's spanning edges (Edge list) from `evidence` (Evidence)."""
    return _Orientation(edges, evidence).run()


class _Orientation:
    def __init__(self, edges, evidence):
        self.edges = [e for e in edges if e.relation != "copy"]
        self.copies = [e for e in edges if e.relation == "copy"]
        self.evidence = evidence
        self.decided = {}                       # id(edge) -> (parent, child, reason)
        self.left = {}                          # id(edge) -> reason it stays undirected
        self.parent_of = dict(evidence.parent_elsewhere)   # name -> why its parent is known
        self.neighbours = {}
        for edge in self.edges:
            self.neighbours.setdefault(edge.a, []).append(edge)
            self.neighbours.setdefault(edge.b, []).append(edge)

    def run(self):
        self._claims()
        self._one_parent()
        return self._result()

    # ------------------------------------------------------------------ evidence
    def _claims(self):
        found = {}
        for parent, child, reason in self.evidence.edge_claims:
            edge = self._edge(parent, child)
            if edge is not None:
                found.setdefault(id(edge), []).append((parent, child, reason))
        for edge in self.edges:
            claims = found.get(id(edge), [])
            if len({(p, c) for p, c, _ in claims}) > 1:
                self.left[id(edge)] = "the evidence about this edge points both ways: " + "; ".join(r for *_, r in claims)
            elif claims:
                parent, child, reason = claims[0]
                if child in self.parent_of:
                    self.left[id(edge)] = f"{reason}; but {child} has its parent elsewhere ({self.parent_of[child]})"
                else:
                    self._decide(edge, parent, child, reason)

    def _one_parent(self):
        """Spread directions: every neighbour of a model with a known parent is its child."""
        changed = True
        while changed:
            changed = False
            for name in list(self.parent_of):
                for edge in self._open(name):
                    child = edge.other(name)
                    if child in self.parent_of:
                        self.left[id(edge)] = (f"both {name} and {child} have their parent elsewhere: the evidence "
                                               "around this edge conflicts")
                        continue
                    self._decide(edge, name, child, f"one parent: {name}'s parent is known ({self.parent_of[name]}), "
                                                    f"so {child} branches from it")
                    changed = True

    # ------------------------------------------------------------------ bookkeeping
    def _edge(self, a, b):
        return next((e for e in self.neighbours.get(a, ()) if e.other(a) == b), None)

    def _open(self, name):
        return [e for e in self.neighbours.get(name, ()) if id(e) not in self.decided and id(e) not in self.left]

    def _decide(self, edge, parent, child, reason):
        self.decided[id(edge)] = (parent, child, reason)
        self.parent_of.setdefault(child, parent)

    def _result(self):
        out = Directions()
        for edge in self.edges:
            if id(edge) in self.decided:
                parent, child, reason = self.decided[id(edge)]
                out.directed.append((parent, child, edge, reason))
            else:
                out.undirected.append((edge, self.left.get(id(edge), NOTHING_DECIDES)))
        out.undirected += [(edge, COPY) for edge in self.copies]
        return out


def untangle(found, turn, edge_between):
    """Directions (as `orient` gives them) with chains that are siblings taken apart, top down:
    a child whose step moves back along its parent's change toward the grandparent (`turn(
    grandparent, parent, child)`: the cosine at the parent, None where it cannot be measured)
    branches from the grandparent (`edge_between(grandparent, child)`: its Edge, None where the
    two are not linked by lineage)."""
    parent_of = {child: (parent, edge, reason) for parent, child, edge, reason in found.directed}
    children = {}
    for child, (parent, _, _) in parent_of.items():
        children.setdefault(parent, []).append(child)
    queue = deque(name for name in children if name not in parent_of)
    while queue:
        for child in children.get(queue.popleft(), []):
            _climb(child, parent_of, turn, edge_between)
            queue.append(child)
    return Directions([(parent, child, edge, reason) for child, (parent, edge, reason) in parent_of.items()], found.undirected)


def _climb(child, parent_of, turn, edge_between):
    """Move `child` up its chain while it moves back toward its grandparent."""
    while True:
        middle = parent_of[child][0]
        if middle not in parent_of:
            return
        grandparent = parent_of[middle][0]
        cosine = turn(grandparent, middle, child)
        edge = edge_between(grandparent, child) if cosine is not None and cosine > SIBLING_TURN else None
        if edge is None:
            return
        parent_of[child] = (grandparent, edge, (
            f"siblings: {child} moves back along {middle}'s change toward {grandparent} (cosine {cosine:.3f} at "
            f"{middle}; a child of {middle} keeps that change), so both branch from {grandparent}"))
