"""The family tree of a set of models: who is whose parent, which way, by which relation.

Families are the connected groups of derived pairs (awm.tree.lineage); models of different families
are never linked. Within a family:

0. Each quantized model goes under the float model of its body it was made from, the nearest
   in weights (awm.tree.copy_links); two copies of one model are siblings under it. Stored
   copies of one float model (every compared weight the same within its storage precision:
   awm.tree.copies) are linked under one of them, and the rest of the tree links to that one.
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
   per model. The rest stay undirected with the reason: never a coin flip presented as a fact.
   Then a chain whose child moves back toward the grandparent is taken apart: siblings trained
   alike, not parent and child.
Every link says how sure its direction is (awm.tree.links): measured, claim or inferred.
"""
import itertools
from collections import Counter

from awm.tree import copies, direction, evidence, hub_cards, merges
from awm.tree.copy_links import CopyLinks
from awm.tree.lineage import Groups, families
from awm.tree.links import FamilyTree, Link, Unsettled, record_tree
from awm.tree.pairs import Pairs
from awm.tree.structure import (
    BODY,
    copy_score,
    copy_tolerance,
    shape_key,
    structural_relation,
    structure_confidence,
)
from awm.witnesses.verdict import is_derived

TIED_SCORE = 1e-3                    # percentage points: scores this close tie
DECISIVE_DISTANCE = 0.5              # ... and rows this much nearer to one of them decide
STACKED_SCORE = 50.0                 # CKA of (nearly) every stacked layer with its source
# A stacked model's layers all match their sources alike (verbatim, or moved alike by later
# training); a model a few layers were pruned from has those layers matching only a neighbour,
# this many times worse than its closest layers (or worse than a copied layer, when those are verbatim).
STACKED_SPREAD = 4.0
# A model whose nearest is a merge, and whose merge's parents' best mix leaves at least this
# share of its distance to the merge, was made from the merge (a mix that fitted it exactly
# would make it a second merge of those parents).
BELOW_MERGE = 0.5
# The angle its parents make at a merge, or at a light fine-tune or re-save of it, is obtuse (it lies
# between them); at their base, whose changes they are, it is about right (cosine 0).
BETWEEN_PARENTS = -0.5


# ----------------------------------------------------------------------------- building
class TreeBuilder(CopyLinks):
    """Links one family's models; `open_digest(name)` reads a model's digest when the rows or
    the Grams are needed."""

    def __init__(self, family, metas, pairs, open_digest):
        self.family, self.metas, self.pairs, self.open = family, metas, pairs, open_digest
        self.tree = FamilyTree()
        self._digests, self._traced, self._samples = {}, {}, {}
        self._merge_bases = []             # (base, [parents], merged model) of TIES / DARE merges
        self._assembled = {}               # model -> ([sources], layers): deeper models made of verbatim layers
        self._leaves = set()               # quantized copies linked under their float model: never anyone's parent
        self._relations = {}               # (a, b) -> (same-shape relation, note)

    def digest(self, name):
        if name not in self._digests:
            self._digests[name] = self.open(name)
        return self._digests[name]

    def build(self):
        self._leaves = self._link_quantized_copies()
        classes = {}
        for name in self.upstream:
            classes.setdefault(shape_key(self.metas[name]), []).append(name)
        self._assembled = {name: found for name in self.upstream if (found := self._verbatim_layers(name))}
        components = [component for members in classes.values() for component in self._link_class(members)]
        entered = self._enter_classes(components)
        for component, edges, space in components:
            self._orient(component, edges, entered.get(id(component)), space)
        return self.tree

    @property
    def upstream(self):
        """The family's models that may be parents: all but the quantized copies already linked."""
        return [name for name in self.family if name not in self._leaves]

    # ------------------------------------------------------------------ one shape class
    def _link_class(self, members):
        """Merges, then the spanning tree of the rest: [(component members, undirected edges)].
        The clearest merge is taken first and leaves the candidates, so one merge is never
        explained by another's parents' mix: a merge of merges is named by the models they mix."""
        space = None
        if len(members) >= 2:
            space = evidence.RowSpace({name: self.digest(name) for name in members})
        merged, below = {}, {}
        while space is not None and len(members) - len(merged) - len(below) >= 3:
            self._find_below_merges(space, members, merged, below)      # before they could pass for a merge's parents
            open_members = [m for m in members if m not in merged and m not in below]
            found = self._merges_among(space, open_members, open_members)
            if not found:
                break
            # Several merges of the same two models explain each other; each is first fitted
            # again without the others, so that a merge is named by the models it mixes.
            plain = self._merges_among(space, list(found), [m for m in open_members if m not in found]) or found
            child = min(plain, key=lambda name: plain[name].quality)
            found = plain
            merged[child] = self._apply_merge(child, found[child])
        if space is not None:
            self._find_below_merges(space, members, merged, below)
        for child, merge in below.items():
            self._link_below_merge(space, child, merge, merged[merge])
        rest = self._link_copies([m for m in members if m not in merged and m not in below], space)
        return self._spanning_components(rest, space)

    def _merges_among(self, space, children, pool):
        """{child: FoundMerge} for the children a merge of models in `pool` explains."""
        found = {}
        for child in children:
            candidates = [m for m in pool if m != child and self.pairs.derived(child, m) and self.pairs.shared_basis(child, m)]
            merge = self._merge(space, child, candidates)
            if merge:
                found[child] = merge
        return found

    def _find_below_merges(self, space, members, merged, below):
        for child in members:
            if child not in merged and child not in below and (merge := self._below_merge(space, child, members, merged)):
                below[child] = merge

    def _below_merge(self, space, child, members, merged):
        """The merge `child` was made from (a fine-tune or a re-save of it), or None: the merge is
        its nearest model, the child lies between the merge's parents as the merge does (the
        parents' own base sees them at a right angle), and their best mix explains the child no
        better than the merge itself does (a second merge of them is fitted exactly by their mix)."""
        for merge, links in merged.items():
            parents = [link.parent for link in links]
            upstream = set(parents) | {base for base, _, made in self._merge_bases if made == merge}
            if child in upstream or not (self.pairs.derived(child, merge) and self.pairs.shared_basis(child, merge)):
                continue
            distance = space.distance(child, merge)
            if any(space.distance(child, other) < distance for other in members if other not in (child, merge)):
                continue
            between = max(space.turn(p, child, q) for p, q in itertools.combinations(parents, 2))
            if between <= BETWEEN_PARENTS and space.fit(child, parents)[1] >= BELOW_MERGE * distance \
                    and (evidence.resaved(space, child, merge) or not evidence.mix_reproduces(space, child, parents)):
                return merge
        return None

    def _link_below_merge(self, space, child, merge, links):
        distance = space.distance(child, merge)
        relation, note = self._same_shape_relation(merge, child, distance)
        why = (f"one parent: {merge} is a merge of {' and '.join(link.parent for link in links)}; {child} lies nearer to it than "
               f"to any other model, and their mix explains {child} no better than {merge} does: a "
               f"{'re-save' if relation == 'copy' else 'fine-tune'} of the merge")
        self.tree.links.append(Link(merge, child, relation, f"{note}; {why}" if note else why, None, round(distance, 6),
                                    confidence="inferred"))

    def _apply_merge(self, child, found):
        by_kind = merges.weights_by_kind(found, child, self.sample)
        links = [Link(p.name, child, "merge", found.how, p.weight, p.change, p.density, "measured") for p in found.parents]
        self.tree.links += links
        if found.layers:
            self.tree.layers[child] = found.layers
        if found.coefficients:
            self.tree.coefficients[child] = found.coefficients
        if by_kind:
            self.tree.weights_by_kind[child] = by_kind
        if found.base:
            self._merge_bases.append((found.base, [p.name for p in found.parents], child))
        return links

    def _merge(self, space, child, candidates):
        """The child's merge (awm.tree.merges.FoundMerge), or None."""
        return merges.find_merge(space, child, candidates, self.digest)

    def _spanning_components(self, members, space):
        """Kruskal on the smallest weight changes between derived members: [(members, edges)]."""
        measured = []
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                # Two models assembled from others' layers were each made from their sources, not one from the other.
                if self.pairs.derived(a, b) and not (a in self._assembled and b in self._assembled):
                    measured.append((self._distance(space, a, b), a, b))
        counts = Counter(distance for distance, _, _ in measured)
        candidates = [(distance, self._tie_breaker(a, b) if counts[distance] > 1 else 0.0, a, b) for distance, a, b in measured]
        groups = Groups(members)
        edges = [(a, b, distance) for distance, _, a, b in sorted(candidates) if groups.join(a, b)]
        return [(group, [e for e in edges if e[0] in group], space) for group in groups.groups()]

    def _tie_breaker(self, a, b):
        """Models whose W_q / W_k are the same (an abliteration, an MLP-only LoRA beside its base)
        are exactly as far from everyone by them: their other weights tell which is nearer. Read
        only for pairs whose distance ties another's."""
        return copies.sample_distance(self.sample(a), self.sample(b))

    def sample(self, name):
        if name not in self._samples:
            self._samples[name] = self.digest(name).weight_sample()
        return self._samples[name]

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
            child, parent, relation, why, confidence = best
            if relation == "multimodal" and self._same_language_model(child, parent):
                self.tree.undirected.append(Unsettled(parent, child, relation, (
                    "the language model's weights are the same in both: a tower added to a frozen model, or the text "
                    "model extracted from the multimodal one; nothing in the weights tells which")))
                continue
            if relation == "stacked":
                self.tree.layers[child] = self._traced[(child, parent)]
            elif relation == "pruned" and self.metas[child]["num_layers"] < self.metas[parent]["num_layers"] \
                    and self.metas[child]["hidden_size"] == self.metas[parent]["hidden_size"]:
                # Which of its parent's layers a depth-pruned model or an every-other-layer student kept.
                traced = evidence.layer_sources(self.digest(child), {parent: self.digest(parent)})
                self.tree.layers[child] = evidence.layer_records(traced)
                why += f"; it keeps layers {', '.join(str(i) for _, i, *_ in traced)} of its parent's (see layers)"
            self.tree.links.append(Link(parent, child, relation, f"structure: {relation}: {why}", confidence=confidence))
            entered[id(component)] = [(child, parent, relation)]
        return entered

    def _link_assembled(self, child):
        sources, layers = self._assembled[child]
        self.tree.layers[child] = layers
        if len(sources) == 1:
            why = f"it is deeper ({len(layers)} vs {self.metas[sources[0]]['num_layers']} layers), each layer a verbatim copy of one of its parent's"
            self.tree.links.append(Link(sources[0], child, "stacked", f"structure: stacked: {why}", confidence="measured"))
            return child, sources[0], "stacked"
        how = (f"structure: a passthrough merge: each of its {len(layers)} layers is a verbatim copy of a layer of "
               f"one of {len(sources)} models (see layers)")
        self.tree.links += [Link(source, child, "merge", how, confidence="measured") for source in sources]
        return child, " / ".join(sources), "merge"

    def _structural_parent(self, component):
        """(child, parent, relation, why, confidence): the most similar model upstream of the
        component by structure; a pick among parents that fit as well is inferred, not measured."""
        candidates = []
        for child in component:
            for parent in self.upstream:
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
        return child, parent, relation, why, "inferred" if others else structure_confidence(relation)

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
        sources = [m for m in self.upstream if m != child and self.pairs.derived(child, m)
                   and (structural_relation(self.metas[child], self.metas[m]) or ("",))[0] == "stacked"
                   and self._shares_a_copied_layer(child, m)]
        if not sources:
            return None
        traced = evidence.layer_sources(self.digest(child), {m: self.digest(m) for m in sources})
        if any(distance > evidence.COPIED_LAYER for _, _, distance, _ in traced):
            return None
        used = list(dict.fromkeys(name for name, *_ in traced))
        if len(used) > 1 and self._holds_them_all(child, used, traced):
            return None
        return used, evidence.layer_records(traced)

    def _holds_them_all(self, deeper, sources, traced):
        """Every layer of every source is one of the deeper model's, and none of its layers
        repeats another: the sources were pruned from it (a base with several depth-pruned
        children), not it assembled from them (a passthrough merge takes slices, leaving some of
        each source's layers out, or repeats layers)."""
        if len({(name, layer) for name, layer, *_ in traced}) < len(traced):
            return False
        return all(distance <= evidence.COPIED_LAYER for source in sources
                   for *_, distance, _ in evidence.layer_sources(self.digest(source), {deeper: self.digest(deeper)}))

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
            distances = sorted(distance for _, _, distance, _ in traced)
            # Every layer of a stacked model comes from one of its parent's, all alike (a parent
            # lightly depth-pruned has a few layers its child lacks, which match only a neighbour).
            # The typical layer is read low (a tenth of the way up): a model twice as deep as an
            # every-other-layer student has half its layers verbatim and half matching only a neighbour.
            alike = distances[-1] <= max(evidence.COPIED_LAYER, STACKED_SPREAD * distances[len(distances) // 10])
            self._traced[(child, parent)] = None if scores[len(scores) // 10] < STACKED_SCORE or not alike else \
                evidence.layer_records(traced)
        return self._traced[(child, parent)] is not None

    # ------------------------------------------------------------------ directions inside a class
    def _orient(self, component, edges, entry, space):
        if not edges:
            return
        spanning = [self._edge(space, a, b, distance) for a, b, distance in edges]
        found = direction.orient(spanning, self._evidence(component, spanning, entry))
        if space is not None:
            found = direction.untangle(found, lambda *chain: self._turn(space, *chain), lambda a, b: self._edge(space, a, b))
        for parent, child, edge, why in found.directed:
            self.tree.links.append(Link(parent, child, edge.relation, _noted(why, edge.note), None, round(edge.distance, 6),
                                        confidence=direction.confidence_of(why)))
        for edge, why in found.undirected:
            self.tree.undirected.append(Unsettled(edge.a, edge.b, edge.relation, _noted(why, edge.note)))

    def _turn(self, space, parent, middle, child):
        """The chain's angle at its middle (awm.tree.evidence.RowSpace.turn), where all three share a basis."""
        chain = (parent, middle, child)
        if not all(self.pairs.shared_basis(a, b) for a, b in ((parent, middle), (middle, child), (parent, child))):
            return None
        return space.turn(*chain) if all(name in space.names for name in chain) else None

    def _edge(self, space, a, b, distance=None):
        if not self.pairs.derived(a, b):
            return None
        distance = self._distance(space, a, b) if distance is None else distance
        return direction.Edge(a, b, distance, *self._same_shape_relation(a, b, distance))

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
                if hub_cards.names_as_base(self.metas[child], parent, self.metas[parent]):
                    known.edge_claims.append((parent, child, (f"metadata: {child}'s config or model card names {parent} as "
                                                             "its base (a claim: the weights link the two, but do not tell "
                                                             "which came first)")))
        return known

def _noted(why, note):
    return f"{note}; {why}" if note else why


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
            tree.weights_by_kind.update(built.weights_by_kind)
    return record_tree(names, tree, pairs, not_compared, metas)
