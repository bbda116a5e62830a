"""Where one suspect sits among the library's models it was compared with: its most likely
parent(s), with the relation, the evidence and its confidence, and the entries that look
derived from it. Only the suspect's own pairs are known here, so this is the family tree's
evidence read from one model's side (awm.tree.build).
"""
from awm.tree import evidence
from awm.tree.build import FamilyTree, Link, TreeBuilder, record_tree
from awm.tree.pairs import Pairs
from awm.tree.structure import shape_key, structural_relation, structure_confidence


def place(suspect, records, metas, open_digest):
    """Where a suspect sits among the library's models it was compared with (`records`: suspect
    vs entry). A same-shape parent is the closest such entry and its direction is the
    structure's or unknown, said so."""
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
        relation, note = builder._same_shape_relation(closest, suspect, distance)
        parents = [Link(closest, suspect, relation,
                        f"the closest of the library's models of its shape ({apart}{'; ' + note if note else ''}); the weights "
                        "do not tell which came first", None, round(distance, 6), confidence="undirected")]
    if not parents:
        upstream = [(pairs.similarity(suspect, n), n, structural_relation(metas[suspect], metas[n])) for n in related]
        upstream = [u for u in upstream if u[2] is not None and (u[2][0] != "stacked" or builder._stacked(suspect, u[1]))]
        if upstream:
            _, parent, (relation, why) = max(upstream, key=lambda u: u[0])
            parents = [Link(parent, suspect, relation, f"structure: {relation}: {why}", confidence=structure_confidence(relation))]
    children = [(n, structural_relation(metas[n], metas[suspect])) for n in related]
    tree = FamilyTree(parents, [], builder.tree.layers, builder.tree.coefficients, builder.tree.weights_by_kind)
    # With a parent of its own in the library, what is smaller than the suspect may as well come
    # from that parent: only the suspect's pairs are known here, so say so.
    caveat = f"; or from {' / '.join(p.parent for p in parents)}, its closest relative" if parents else ""
    tree.links += [Link(suspect, n, found[0], f"structure: {found[0]}: {found[1]}{caveat}",
                        confidence=structure_confidence(found[0]) if not caveat else "inferred")
                   for n, found in children if found is not None and (found[0] != "stacked" or builder._stacked(n, suspect))]
    record = record_tree([suspect, *related], tree, pairs, (), metas)
    node = next(n for n in record["nodes"] if n["name"] == suspect)
    return {"parents": node["parents"], "layers": node["layers"], "coefficients": node["coefficients"],
            "weights_by_kind": node.get("weights_by_kind"),
            "derived_from_it": [{"name": n["name"], **{k: p[k] for k in ("relation", "direction", "confidence", "awm", "qk_circuit")}}
                                for n in record["nodes"] for p in n["parents"] if p["name"] == suspect]}
