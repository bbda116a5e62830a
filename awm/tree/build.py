"""The family tree of a set of models: who is whose parent, which way, by which relation.

Families are the connected groups of derived pairs (awm.tree.lineage); models of different families
are never linked. Within a family:

1. Models of one shape (width, depth, heads, experts, modalities, full or quantized precision)
   that share their hidden basis are points in weight space (awm.tree.evidence): a model that
   is a weighted average of others, or takes its layers from several of them, is a merge; the
   others are linked by the tree of smallest weight changes (a minimum spanning tree).
2. A shape class is entered from another by a structural relation, which also fixes the
   direction: a pruned model is narrower or shallower than its parent, an upcycled one has
   experts its parent lacks, a multimodal one adds a tower (unless its language model is the
   other's very weights: then either could be the extraction), a quantized one is stored in
   fewer bits, an adapter is a low-rank update on a base. A deeper model whose every layer is a
   verbatim copy of a shallower relative's is stacked from it, or a passthrough merge
   (frankenmerge) of several. One step changes one thing. The link goes from the most similar
   model that is upstream by structure.
3. Inside a class, each edge is directed only by evidence about it (awm.tree.direction): the
   model the class was entered through, a TIES / DARE merge's base, a declared base, one parent
   per model, a hub's branches. The rest stay undirected with the reason: never a coin flip
   presented as a fact. Then a chain whose child moves back toward the grandparent is taken
   apart: siblings trained alike, not parent and child.
"""
from dataclasses import dataclass, field

from awm.tree import direction, evidence, hub_cards, merges
from awm.tree.lineage import Groups, families
from awm.tree.pairs import Pairs
from awm.tree.structure import (
    BODY,
    copy_score,
    copy_tolerance,
    shape_key,
    structural_relation,
)
from awm.witnesses.verdict import is_derived

TIED_SCORE = 1e-3                    # percentage points: scores this close tie
DECISIVE_DISTANCE = 0.5              # ... and rows this much nearer to one of them decide
STACKED_SCORE = 50.0                 # CKA of (nearly) every stacked layer with its source


@dataclass
class Link:
    parent: str
    child: str
    relation: str
    direction: str
    weight: float = None
    change: float = None
    density: float = None            # a TIES / DARE merge: the share of this parent's change kept


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


# ----------------------------------------------------------------------------- building
class TreeBuilder:
    """Links one family's models; `open_digest(name)` reads a model's digest when the rows or
    the Grams are needed."""

    def __init__(self, family, metas, pairs, open_digest):
        self.family, self.metas, self.pairs, self.open = family, metas, pairs, open_digest
        self.tree = FamilyTree()
        self._digests, self._traced = {}, {}
        self._merge_bases = []             # (base, [parents], merged model) of TIES / DARE merges
        self._assembled = {}               # model -> ([sources], layers): deeper models made of verbatim layers

    def digest(self, name):
        if name not in self._digests:
            self._digests[name] = self.open(name)
        return self._digests[name]

    def build(self):
        classes = {}
        for name in self.family:
            classes.setdefault(shape_key(self.metas[name]), []).append(name)
        self._assembled = {name: found for name in self.family if (found := self._verbatim_layers(name))}
        components = [component for members in classes.values() for component in self._link_class(members)]
        entered = self._enter_classes(components)
        for component, edges, space in components:
            self._orient(component, edges, entered.get(id(component)), space)
        return self.tree

    # ------------------------------------------------------------------ one shape class
    def _link_class(self, members):
        """Merges, then the spanning tree of the rest: [(component members, undirected edges)].
        The clearest merge is taken first and leaves the candidates, so one merge is never
        explained by another's parents' mix: a merge of merges is named by the models they mix."""
        space = None
        if len(members) >= 2:
            space = evidence.RowSpace({name: self.digest(name) for name in members})
        merged = {}
        while space is not None and len(members) - len(merged) >= 3:
            found = {}
            for child in members:
                if child in merged:
                    continue
                candidates = [m for m in members if m != child and m not in merged and self.pairs.derived(child, m)
                              and self.pairs.shared_basis(child, m)]
                merge = self._merge(space, child, candidates)
                if merge:
                    found[child] = merge
            if not found:
                break
            child = min(found, key=lambda name: found[name].quality)
            merged[child] = self._apply_merge(child, found[child])
        rest = [m for m in members if m not in merged]
        return self._spanning_components(rest, space)

    def _apply_merge(self, child, found):
        links = [Link(p.name, child, "merge", found.how, p.weight, p.change, p.density) for p in found.parents]
        self.tree.links += links
        if found.layers:
            self.tree.layers[child] = found.layers
        if found.coefficients:
            self.tree.coefficients[child] = found.coefficients
        if found.base:
            self._merge_bases.append((found.base, [p.name for p in found.parents], child))
        return links

    def _merge(self, space, child, candidates):
        """The child's merge (awm.tree.merges.FoundMerge), or None."""
        return merges.find_merge(space, child, candidates, self.digest)

    def _spanning_components(self, members, space):
        """Kruskal on the smallest weight changes between derived members: [(members, edges)]."""
        candidates = []
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                # Two models assembled from others' layers were each made from their sources, not one from the other.
                if self.pairs.derived(a, b) and not (a in self._assembled and b in self._assembled):
                    candidates.append((self._distance(space, a, b), a, b))
        groups = Groups(members)
        edges = [(a, b, distance) for distance, a, b in sorted(candidates) if groups.join(a, b)]
        return [(group, [e for e in edges if e[0] in group], space) for group in groups.groups()]

    def _distance(self, space, a, b):
        """How far two same-shape models' weights are apart (their rows when they share a basis,
        else the shortfall of their scores)."""
        if space is not None and self.pairs.shared_basis(a, b):
            return space.distance(a, b)
        return (2 * max(0.0, 1 - self.pairs.similarity(a, b) / 100)) ** 0.5

    # ------------------------------------------------------------------ between shape classes
    def _enter_classes(self, components):
        """Link each component to the models upstream of it by structure: {id: [(member, its
        structural parent(s), relation)]} for the links that carry a direction."""
        entered = {}
        for component, *_ in components:
            assembled = [child for child in component if child in self._assembled]
            for child in assembled:
                entered.setdefault(id(component), []).append(self._link_assembled(child))
            if assembled:
                continue
            best = self._structural_parent(component)
            if best is None:
                continue
            child, parent, relation, why = best
            if relation == "multimodal" and self._same_language_model(child, parent):
                self.tree.undirected.append(Unsettled(parent, child, relation, (
                    "the language model's weights are the same in both: a tower added to a frozen model, or the text "
                    "model extracted from the multimodal one; nothing in the weights tells which")))
                continue
            self.tree.links.append(Link(parent, child, relation, f"structure: {relation}: {why}"))
            if relation == "stacked":
                self.tree.layers[child] = self._traced[(child, parent)]
            entered[id(component)] = [(child, parent, relation)]
        return entered

    def _link_assembled(self, child):
        sources, layers = self._assembled[child]
        self.tree.layers[child] = layers
        if len(sources) == 1:
            why = f"it is deeper ({len(layers)} vs {self.metas[sources[0]]['num_layers']} layers), each layer a verbatim copy of one of its parent's"
            self.tree.links.append(Link(sources[0], child, "stacked", f"structure: stacked: {why}"))
            return child, sources[0], "stacked"
        how = (f"structure: a passthrough merge: each of its {len(layers)} layers is a verbatim copy of a layer of "
               f"one of {len(sources)} models (see layers)")
        self.tree.links += [Link(source, child, "merge", how) for source in sources]
        return child, " / ".join(sources), "merge"

    def _structural_parent(self, component):
        """(child, parent, relation, why): the most similar model upstream of the component by structure."""
        candidates = []
        for child in component:
            for parent in self.family:
                if parent in component or not self.pairs.derived(child, parent):
                    continue
                if set(self._assembled.get(parent, ((),))[0]) & set(component):
                    continue                                     # a model made of this branch's layers is downstream of it
                found = structural_relation(self.metas[child], self.metas[parent])
                if found is None or (found[0] == "stacked" and not self._stacked(child, parent)):
                    continue
                if found[0] == "pruned" and self.metas[child]["hidden_size"] == self.metas[parent]["hidden_size"] \
                        and self._stacked(parent, child):
                    continue                                     # the deeper one was stacked from it, not the reverse
                candidates.append((self.pairs.similarity(child, parent), child, parent, found))
        if not candidates:
            return None
        candidates.sort(key=lambda c: -c[0])
        tied = [c for c in candidates if c[0] >= candidates[0][0] - TIED_SCORE]
        # Scores that tie (a copy and a light fine-tune both round to 100 %) are told apart by
        # the rows, where they can be compared as stored and one is clearly the nearer; else
        # the link names the others that fit as well.
        distances = sorted((self._row_distance(c[1], c[2]), i) for i, c in enumerate(tied))
        if len(tied) > 1 and distances[0][0] <= DECISIVE_DISTANCE * distances[1][0]:
            tied = [tied[distances[0][1]]]
        _, child, parent, (relation, why) = tied[0]
        others = [c[2] for c in tied[1:] if c[1] == child]
        if others:
            why += f" (as close by every measure: {', '.join(others)})"
        return child, parent, relation, why

    def _row_distance(self, a, b):
        """How far two models' rows lie as stored (inf where they cannot be compared so)."""
        if not self.pairs.shared_basis(a, b) or any(self.metas[a][k] != self.metas[b][k] for k in BODY):
            return float("inf")
        return evidence.RowSpace({name: self.digest(name) for name in (a, b)}).distance(a, b)

    def _same_language_model(self, child, parent):
        """The language models' W_q / W_k rows are as close as two stored copies of the same
        weights (every layer's CKA alike, where the rows cannot be compared as stored)."""
        tolerance = copy_tolerance(self.metas[child], self.metas[parent])
        distance = self._row_distance(child, parent)
        if distance < float("inf"):
            return distance <= tolerance
        scores = self.pairs.layer_scores(child, parent)
        return bool(scores) and all(score >= copy_score(tolerance) for score in scores.values())

    def _verbatim_layers(self, child):
        """A deeper model whose every layer is a verbatim copy of a layer of shallower relatives:
        one (depth up-scaling) or several (mergekit's passthrough, a frankenmerge). ([sources],
        layers) or None."""
        sources = [m for m in self.family if m != child and self.pairs.derived(child, m)
                   and (structural_relation(self.metas[child], self.metas[m]) or ("",))[0] == "stacked"
                   and self._shares_a_copied_layer(child, m)]
        if not sources:
            return None
        traced = evidence.layer_sources(self.digest(child), {m: self.digest(m) for m in sources})
        if any(distance > evidence.COPIED_LAYER for _, _, distance, _ in traced):
            return None
        used = list(dict.fromkeys(name for name, *_ in traced))
        return used, evidence.layer_records(traced)

    def _shares_a_copied_layer(self, child, parent):
        """Some layer pair the pair's scoring matched is as alike as a stored copy: a cheap
        necessary condition before every layer is traced."""
        floor = copy_score(copy_tolerance(self.metas[child], self.metas[parent]))
        return any(score >= floor for score in self.pairs.layer_scores(child, parent).values())

    def _stacked(self, child, parent):
        """The deeper model repeats the shallower one's layers: each of its layers traced to one
        of the parent's (kept for the tree's layers when the link is made)."""
        if (child, parent) not in self._traced:
            traced = evidence.layer_sources(self.digest(child), {parent: self.digest(parent)})
            scores = sorted(score for *_, score in traced)
            # Every layer of a stacked model comes from one of its parent's (a depth-pruned parent
            # has layers its pruned child lacks, and they match nothing well).
            self._traced[(child, parent)] = None if scores[len(scores) // 10] < STACKED_SCORE else \
                evidence.layer_records(traced)
        return self._traced[(child, parent)] is not None

    # ------------------------------------------------------------------ directions inside a class
    def _orient(self, component, edges, entry, space):
        if not edges:
            return
        spanning = [direction.Edge(a, b, distance, self._same_shape_relation(a, b, distance)) for a, b, distance in edges]
        found = direction.orient(spanning, self._evidence(component, spanning, entry))
        if space is not None:
            found = direction.untangle(found, lambda *chain: self._turn(space, *chain), lambda a, b: self._edge(space, a, b))
        for parent, child, edge, why in found.directed:
            self.tree.links.append(Link(parent, child, edge.relation, why, None, round(edge.distance, 6)))
        for edge, why in found.undirected:
            self.tree.undirected.append(Unsettled(edge.a, edge.b, edge.relation, why))

    def _turn(self, space, parent, middle, child):
        """The chain's angle at its middle (awm.tree.evidence.RowSpace.turn), where all three share a basis."""
        chain = (parent, middle, child)
        if not all(self.pairs.shared_basis(a, b) for a, b in ((parent, middle), (middle, child), (parent, child))):
            return None
        return space.turn(*chain) if all(name in space.names for name in chain) else None

    def _edge(self, space, a, b):
        if not self.pairs.derived(a, b):
            return None
        distance = self._distance(space, a, b)
        return direction.Edge(a, b, distance, self._same_shape_relation(a, b, distance))

    def _evidence(self, component, edges, entry):
        """What decides single edges of this class before its shape is read: the model it was
        entered through (its parent lies in another class), the bases of TIES / DARE merges,
        and the bases configs and model cards declare."""
        known = direction.Evidence()
        for child, parent, relation in entry or ():
            known.parent_elsewhere[child] = f"{relation} from {parent}, by structure"
        members = set(component)
        for base, parents, merged in self._merge_bases:
            if base in members:
                known.edge_claims += [(base, parent, f"structure: the merge {merged} is built on {parent}'s change from {base}")
                                      for parent in parents if parent in members]
        for edge in edges:
            for parent, child in ((edge.a, edge.b), (edge.b, edge.a)):
                if _declares(self.metas[child], parent, self.metas[parent]):
                    known.edge_claims.append((parent, child, (f"metadata: {child}'s config or model card names {parent} as "
                                                             "its base (a claim: the weights neither confirm nor deny it)")))
        return known

    def _same_shape_relation(self, a, b, distance):
        tolerance = copy_tolerance(self.metas[a], self.metas[b])
        if distance <= tolerance and all(score >= copy_score(tolerance) for score in self.pairs.layer_scores(a, b).values()):
            return "copy"
        return "fine-tune"


def _declares(meta, name, other_meta):
    """Does `meta`'s config or model card name the model `name` (described by `other_meta`) as its base?"""
    declared = meta.get("declared_base") or ()
    claims = [declared] if isinstance(declared, str) else list(declared)
    known = {name, other_meta.get("path"), hub_cards.hub_repo(other_meta)} - {None}
    return any(claim in known or claim.split("/")[-1] in known for claim in claims)


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
            tree.coefficients.update(built.coefficients)
    return _record(names, tree, pairs, not_compared, metas)


def _record(names, tree, pairs, not_compared, metas):
    parents = {name: [] for name in names}
    for link in tree.links:
        awm, circuit = pairs.scores(link.parent, link.child)
        parents[link.child].append({"name": link.parent, "relation": link.relation, "weight": link.weight,
                                    "direction": link.direction, "awm": awm, "qk_circuit": circuit, "change": link.change,
                                    "density": link.density})
    return {
        "nodes": [{"name": name, "parents": parents[name], "layers": tree.layers.get(name), "coefficients": tree.coefficients.get(name),
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
    found = builder._merge(space, suspect, same) if len(same) >= 2 else None
    parents = builder._apply_merge(suspect, found) if found else []
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
    tree = FamilyTree(parents, [], builder.tree.layers, builder.tree.coefficients)
    # With a parent of its own in the library, what is smaller than the suspect may as well come
    # from that parent: only the suspect's pairs are known here, so say so.
    caveat = f"; or from {' / '.join(p.parent for p in parents)}, its closest relative" if parents else ""
    tree.links += [Link(suspect, n, found[0], f"structure: {found[0]}: {found[1]}{caveat}") for n, found in children
                   if found is not None and (found[0] != "stacked" or builder._stacked(n, suspect))]
    record = _record([suspect, *related], tree, pairs, (), metas)
    node = next(n for n in record["nodes"] if n["name"] == suspect)
    return {"parents": node["parents"], "layers": node["layers"], "coefficients": node["coefficients"],
            "derived_from_it": [{"name": n["name"], **{k: p[k] for k in ("relation", "direction", "awm", "qk_circuit")}}
                                for n in record["nodes"] for p in n["parents"] if p["name"] == suspect]}
