"""The family tree of a set of models: who is whose parent, which way, by which relation.

Families are the connected groups of derived pairs (awm.lineage); models of different families
are never linked. Within a family:

1. Models of one shape (width, depth, heads, experts, modalities, full or quantized precision)
   that share their hidden basis are points in weight space (awm.tree_evidence): a model that
   is a weighted average of others, or takes its layers from several of them, is a merge; the
   others are linked by the tree of smallest weight changes (a minimum spanning tree).
2. A shape class is entered from another by a structural relation, which also fixes the
   direction: a pruned model is narrower or shallower than its parent, an upcycled one has
   experts its parent lacks, a multimodal one adds a tower, a quantized one is stored in fewer
   bits, an adapter is a low-rank update on a base, a stacked one repeats its parent's layers. The link goes from the most similar model
   that is upstream by structure.
3. Inside a class, edges point away from its root: the model the class was entered through,
   else a model three or more others branch from, else the only model with structural
   descendants, else a base a config declares (a claim, said so). Without any, the links stay
   undirected with the reason: never a coin flip presented as a fact.
"""
from dataclasses import dataclass, field

from awm import hub_cards
from awm import tree_evidence as evidence
from awm.lineage import Groups, families
from awm.verdict import is_derived

RELATIONS = ("copy", "quantized", "adapter", "fine-tune", "pruned", "upcycled", "multimodal", "stacked", "merge")
FULL_PRECISION = ("F64", "F32", "F16", "BF16", "float64", "float32", "float16", "bfloat16")
COPY_DISTANCE = 1e-6                 # rows this close are the same weights as stored
COPY_SCORE = 99.9999                 # and every layer scores this high
# A re-save in another float format rounds every weight by at most half its unit roundoff; rows
# that far apart (relative, as RowSpace measures) are the same weights in another precision.
UNIT_ROUNDOFF = {"F64": 2.0 ** -53, "F32": 2.0 ** -24, "F16": 2.0 ** -11, "BF16": 2.0 ** -8,
                 "float64": 2.0 ** -53, "float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
STACKED_SCORE = 50.0                 # CKA of (nearly) every stacked layer with its source
COPY_REASON = "the same weights as stored: nothing in them tells which is the original"


@dataclass
class Link:
    parent: str
    child: str
    relation: str
    direction: str
    weight: float = None
    change: float = None


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


# ----------------------------------------------------------------------------- structure
def is_quantized(meta):
    return str(meta.get("dtype")) not in FULL_PRECISION


def shape_key(meta):
    return (meta["hidden_size"], meta["num_layers"], meta["num_heads"], meta["num_kv_heads"], meta["head_dim"],
            meta.get("experts") or 0, tuple(meta.get("modalities") or ("text",)), is_quantized(meta), bool(meta.get("adapter")))


def structural_relation(child, parent):
    """The relation by which `parent` could be upstream of `child` from their structure alone
    (None: structure does not say), with the evidence in words."""
    extra = [m for m in child.get("modalities") or () if m not in (parent.get("modalities") or ())]
    if extra:
        return "multimodal", f"it adds a {' and '.join(extra)} tower to the language model"
    if (child.get("experts") or 0) > 1 and not parent.get("experts"):
        return "upcycled", f"it is a mixture of {child['experts']} experts, its parent dense"
    width = ("hidden_size", "num_heads", "num_kv_heads", "head_dim")
    if all(child[k] <= parent[k] for k in width) and any(child[k] < parent[k] for k in width):
        return "pruned", f"it is narrower ({child['hidden_size']} vs {parent['hidden_size']} hidden dims, " \
                         f"{child['num_heads']} vs {parent['num_heads']} heads)"
    if all(child[k] == parent[k] for k in width):
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


def _is_base_of(adapter, meta):
    return bool(adapter.get("base")) and adapter["base"] in (meta.get("path"), meta.get("name"))


# ----------------------------------------------------------------------------- the pairs
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
        record = self.get(a, b)
        return record is not None and bool(record["evidence"].get("alignment", {}).get("stored_order"))

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


# ----------------------------------------------------------------------------- building
class TreeBuilder:
    """Links one family's models; `open_digest(name)` reads a model's digest when the rows or
    the Grams are needed."""

    def __init__(self, family, metas, pairs, open_digest):
        self.family, self.metas, self.pairs, self.open = family, metas, pairs, open_digest
        self.tree = FamilyTree()
        self._digests, self._traced = {}, {}

    def digest(self, name):
        if name not in self._digests:
            self._digests[name] = self.open(name)
        return self._digests[name]

    def build(self):
        classes = {}
        for name in self.family:
            classes.setdefault(shape_key(self.metas[name]), []).append(name)
        components = [component for members in classes.values() for component in self._link_class(members)]
        entered = self._enter_classes(components)
        for component, edges in components:
            self._orient(component, edges, entered.get(id(component)))
        return self.tree

    # ------------------------------------------------------------------ one shape class
    def _link_class(self, members):
        """Merges, then the spanning tree of the rest: [(component members, undirected edges)]."""
        space = None
        if len(members) >= 2:
            space = evidence.RowSpace({name: self.digest(name) for name in members})
        merged = {}
        if space is not None and len(members) >= 3:
            for child in members:
                candidates = [m for m in members if m != child and self.pairs.derived(child, m) and self.pairs.shared_basis(child, m)]
                merge = self._merge(space, child, candidates)
                if merge:
                    merged[child] = merge
        for child, links in merged.items():
            self.tree.links += links
        rest = [m for m in members if m not in merged]
        return self._spanning_components(rest, space)

    def _merge(self, space, child, candidates):
        """The child's merge links, or None when no merge explains it clearly better."""
        if len(candidates) < 2:
            return None
        layerwise = self._layerwise(space, child, candidates)
        if layerwise:
            return layerwise
        fit = evidence.best_merge(space, child, candidates)
        if fit is None:
            return None
        if fit.weights is not None:
            how = (f"structure: a weighted average of its {len(fit.parents)} parents reproduces it (the fit leaves "
                   f"{100 * fit.residual:.3f} % of its weights; the best single parent, {fit.single}, {100 * fit.single_residual:.2f} %)")
            weights = [round(w, 4) for w in fit.weights]
        else:
            how = (f"structure: each entry of its change from {fit.base} is zero, one parent's change or their mean "
                   f"(a TIES / DARE-style merge; {100 * fit.residual:.1f} % left unexplained): not a linear combination, "
                   "no coefficients")
            weights = [None] * len(fit.parents)
        return [Link(parent, child, "merge", how, weight, round(space.distance(child, parent), 6))
                for parent, weight in zip(fit.parents, weights)]

    def _layerwise(self, space, child, candidates):
        """Different kept layers copied from different candidates: a layer-wise merge, each of
        the child's layers traced to its source through the Grams."""
        nearest = evidence.per_layer_sources(space, child, candidates)
        sources = {name for name, distance in nearest if distance <= evidence.COPIED_LAYER}
        if len(sources) < 2 or any(distance > evidence.COPIED_LAYER for _, distance in nearest):
            return None
        traced = evidence.layer_sources(self.digest(child), {name: self.digest(name) for name in candidates})
        self.tree.layers[child] = [{"layer": j, "source": name, "source_layer": i, "score": score}
                                   for j, (name, i, _, score) in enumerate(traced)]
        parents = sorted({name for name, *_ in traced}, key=lambda n: [s for s, *_ in traced].index(n))
        how = (f"structure: its layers are taken from {len(parents)} models (layer by layer, see layers), "
               "each nearly verbatim")
        return [Link(parent, child, "merge", how) for parent in parents]

    def _spanning_components(self, members, space):
        """Kruskal on the smallest weight changes between derived members: [(members, edges)]."""
        candidates = []
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if self.pairs.derived(a, b):
                    candidates.append((self._distance(space, a, b), a, b))
        groups = Groups(members)
        edges = [(a, b, distance) for distance, a, b in sorted(candidates) if groups.join(a, b)]
        return [(group, [e for e in edges if e[0] in group]) for group in groups.groups()]

    def _distance(self, space, a, b):
        """How far two same-shape models' weights are apart (their rows when they share a basis,
        else the shortfall of their scores)."""
        if space is not None and self.pairs.shared_basis(a, b):
            return space.distance(a, b)
        return (2 * max(0.0, 1 - self.pairs.similarity(a, b) / 100)) ** 0.5

    # ------------------------------------------------------------------ between shape classes
    def _enter_classes(self, components):
        """Link each component to the most similar model upstream of it by structure: {id: (entry
        member, its structural parent's name)}."""
        entered = {}
        for component, _ in components:
            best = None
            for child in component:
                for parent in self.family:
                    if parent in component or not self.pairs.derived(child, parent):
                        continue
                    found = structural_relation(self.metas[child], self.metas[parent])
                    if found is None or (found[0] == "stacked" and not self._stacked(child, parent)):
                        continue
                    if found[0] == "pruned" and self.metas[child]["hidden_size"] == self.metas[parent]["hidden_size"] \
                            and self._stacked(parent, child):
                        continue                                     # the deeper one was stacked from it, not the reverse
                    similarity = self.pairs.similarity(child, parent)
                    if best is None or similarity > best[0]:
                        best = (similarity, child, parent, found)
            if best is None:
                continue
            _, child, parent, (relation, why) = best
            self.tree.links.append(Link(parent, child, relation, f"structure: {relation}: {why}"))
            if relation == "stacked":
                self.tree.layers[child] = self._traced[(child, parent)]
            entered[id(component)] = (child, parent, relation)
        return entered

    def _stacked(self, child, parent):
        """The deeper model repeats the shallower one's layers: each of its layers traced to one
        of the parent's (kept for the tree's layers when the link is made)."""
        if (child, parent) not in self._traced:
            traced = evidence.layer_sources(self.digest(child), {parent: self.digest(parent)})
            scores = sorted(score for *_, score in traced)
            # Every layer of a stacked model comes from one of its parent's (a depth-pruned parent
            # has layers its pruned child lacks, and they match nothing well).
            self._traced[(child, parent)] = None if scores[len(scores) // 10] < STACKED_SCORE else \
                [{"layer": j, "source": name, "source_layer": i, "score": score} for j, (name, i, _, score) in enumerate(traced)]
        return self._traced[(child, parent)] is not None

    # ------------------------------------------------------------------ directions inside a class
    def _orient(self, component, edges, entry):
        if not edges:
            return
        root, why = self._root(component, edges, entry)
        if root is None:
            for a, b, distance in edges:
                relation = self._same_shape_relation(a, b, distance)
                self.tree.undirected.append(Unsettled(a, b, relation, COPY_REASON if relation == "copy" else why))
            return
        neighbours = {}
        for a, b, distance in edges:
            neighbours.setdefault(a, []).append((b, distance))
            neighbours.setdefault(b, []).append((a, distance))
        frontier, seen = [root], {root}
        while frontier:
            parent = frontier.pop()
            for child, distance in neighbours.get(parent, ()):
                if child not in seen:
                    seen.add(child)
                    frontier.append(child)
                    relation = self._same_shape_relation(parent, child, distance)
                    if relation == "copy":           # identical weights: nothing in them tells the original
                        self.tree.undirected.append(Unsettled(parent, child, relation, COPY_REASON))
                    else:
                        self.tree.links.append(Link(parent, child, relation, why, None, round(distance, 6)))

    def _root(self, component, edges, entry):
        if entry is not None:
            child, parent, relation = entry
            return child, (f"tree's shape: {child} is where this branch entered the family ({relation} from {parent}); "
                           "the others of its shape branch from it")
        degree = {}
        for a, b, _ in edges:
            degree[a], degree[b] = degree.get(a, 0) + 1, degree.get(b, 0) + 1
        most = max(degree.values())
        hubs = [m for m in component if degree.get(m, 0) == most]
        if most >= 3 and len(hubs) == 1:
            return hubs[0], f"tree's shape: {most} of its shape branch from {hubs[0]} (siblings are less alike than each is to it)"
        upstream = [m for m in component if any(l.parent == m and l.child not in component for l in self.tree.links)]
        if len(upstream) == 1:
            return upstream[0], (f"tree's shape: {upstream[0]} is the only one of its shape that other shapes of the "
                                 "family were made from")
        declared = [m for m in component for other in component
                    if other != m and _declares(self.metas[other], m, self.metas[m])]
        if len(set(declared)) == 1:
            return declared[0], (f"metadata: a config in this branch names {declared[0]} as its base "
                                 "(a claim, used only because nothing in the weights decides)")
        return None, ("same shape and nothing decides which came first: no structural change, no model three others "
                      "branch from, no metadata claim")

    def _same_shape_relation(self, a, b, distance):
        tolerance = copy_tolerance(self.metas[a], self.metas[b])
        if distance <= tolerance and all(score >= copy_score(tolerance) for score in self.pairs.layer_scores(a, b).values()):
            return "copy"
        return "fine-tune"


def copy_tolerance(meta_a, meta_b):
    """How far apart two stored copies of the same weights may lie: half the coarser unit
    roundoff of their storage precisions (at least COPY_DISTANCE)."""
    coarser = max(UNIT_ROUNDOFF.get(str(m.get("dtype")), 0.0) for m in (meta_a, meta_b))
    return max(COPY_DISTANCE, coarser / 2)


def copy_score(tolerance):
    """The layer score two copies reach: CKA falls short of 1 by about the square of the relative
    change, so a rounding of `tolerance` leaves at least this (COPY_SCORE at full precision)."""
    return min(COPY_SCORE, 100 * (1 - 4 * tolerance ** 2))


def _declares(meta, name, other_meta):
    declared = meta.get("declared_base")
    return bool(declared) and (declared == name or declared.split("/")[-1] == name or declared == other_meta.get("path"))


# ----------------------------------------------------------------------------- the record
def build(names, records, metas, open_digest, not_compared=()):
    """The `tree` section of lineage.json (docs/library.md): every model a node, its parents with
    the relation and the evidence, undirected pairs with the reason, models left out."""
    pairs = Pairs(records)
    edges = [{"a": a, "b": b} for (a, b), record in pairs.records.items() if a < b and is_derived(record["verdict"])]
    tree = FamilyTree()
    for family in families(names, edges):
        if len(family) > 1:
            built = TreeBuilder(family, metas, pairs, open_digest).build()
            tree.links += built.links
            tree.undirected += built.undirected
            tree.layers.update(built.layers)
    return _record(names, tree, pairs, not_compared, metas)


def _record(names, tree, pairs, not_compared, metas):
    parents = {name: [] for name in names}
    for link in tree.links:
        awm, circuit = pairs.scores(link.parent, link.child)
        parents[link.child].append({"name": link.parent, "relation": link.relation, "weight": link.weight,
                                    "direction": link.direction, "awm": awm, "qk_circuit": circuit, "change": link.change})
    return {
        "nodes": [{"name": name, "parents": parents[name], "layers": tree.layers.get(name),
                   "hub": hub_cards.declared_base(parents[name], lambda n: hub_cards.hub_repo(metas.get(n)) or n)} for name in names],
        "undirected": [{"a": u.a, "b": u.b, "relation": u.relation, "reason": u.reason} for u in tree.undirected],
        "not_compared": [{"name": name, "reason": reason} for name, reason in not_compared],
    }


# ----------------------------------------------------------------------------- one suspect
def place(suspect, records, metas, open_digest):
    """Where a suspect sits among the library's models it was compared with (`records`: suspect
    vs entry): its most likely parent(s) with the relation and the evidence, and the entries that
    look derived from it. Only the suspect's own pairs are known here, so a same-shape parent is
    the closest such entry and its direction is the structure's or unknown, said so."""
    pairs = Pairs(records)
    related = [n for n in metas if n != suspect and pairs.derived(suspect, n)]
    builder = TreeBuilder([suspect, *related], metas, pairs, open_digest)
    same_shape = [n for n in related if shape_key(metas[n]) == shape_key(metas[suspect])]
    same = [n for n in same_shape if pairs.shared_basis(suspect, n)]
    space = evidence.RowSpace({n: builder.digest(n) for n in [suspect, *same]}) if same else None
    parents = (builder._merge(space, suspect, same) or []) if len(same) >= 2 else []
    if not parents and same_shape:
        # As the map measures same-shape models: their rows when they share a basis, else
        # their scores' shortfall (a rotated residual stream, a new embedding's permutation).
        distances = {n: builder._distance(space, suspect, n) for n in same_shape}
        # Entries whose W_q / W_k are equally close (siblings that kept the parent's body under a
        # new embedding): the one that also shares the suspect's embedding holds more of it.
        tied = [n for n in same_shape if distances[n] <= min(distances.values()) + evidence.SAME_WEIGHTS]
        closest = min(tied, key=lambda n: (not pairs.share_embedding(suspect, n), distances[n]))
        distance = distances[closest]
        apart = f"weights {100 * distance:.3g} % apart" if closest in same else \
            "AWM / QK-circuit {:.2f} / {:.2f} % under its alignment".format(*pairs.scores(suspect, closest))
        parents = [Link(closest, suspect, builder._same_shape_relation(closest, suspect, distance),
                        f"the closest of the library's models of its shape ({apart}); the weights do not tell which came first",
                        None, round(distance, 6))]
    if not parents:
        upstream = [(pairs.similarity(suspect, n), n, structural_relation(metas[suspect], metas[n])) for n in related]
        upstream = [u for u in upstream if u[2] is not None and (u[2][0] != "stacked" or builder._stacked(suspect, u[1]))]
        if upstream:
            _, parent, (relation, why) = max(upstream, key=lambda u: u[0])
            parents = [Link(parent, suspect, relation, f"structure: {relation}: {why}")]
    children = [(n, structural_relation(metas[n], metas[suspect])) for n in related]
    tree = FamilyTree(parents, [], builder.tree.layers)
    # With a parent of its own in the library, what is smaller than the suspect may as well come
    # from that parent: only the suspect's pairs are known here, so say so.
    caveat = f"; or from {' / '.join(p.parent for p in parents)}, its closest relative" if parents else ""
    tree.links += [Link(suspect, n, found[0], f"structure: {found[0]}: {found[1]}{caveat}") for n, found in children
                   if found is not None and (found[0] != "stacked" or builder._stacked(n, suspect))]
    record = _record([suspect, *related], tree, pairs, (), metas)
    node = next(n for n in record["nodes"] if n["name"] == suspect)
    return {"parents": node["parents"], "layers": node["layers"],
            "derived_from_it": [{"name": n["name"], **{k: p[k] for k in ("relation", "direction", "awm", "qk_circuit")}}
                                for n in record["nodes"] for p in n["parents"] if p["name"] == suspect]}
