"""The family map of a set of models: which pairs are derived, and the families they form.

Edges are the pairs whose verdict is derived (or derived, disguised), with their scores; a
family is a connected group of such edges. Models with no derived edge stand alone.
"""
from awm.witnesses.verdict import is_derived


def lineage_graph(records, ruled_out=()):
    """{"nodes", "edges", "families", "pairs_compared", "pairs_ruled_out"} from scored pair
    records and the pairs the first pass ruled out ({"models": [a, b]}: nodes, never edges)."""
    nodes = list(dict.fromkeys([n for r in records for n in (r["model_a"]["name"], r["model_b"]["name"])] +
                               [n for entry in ruled_out for n in entry["models"]]))
    edges = [{"a": r["model_a"]["name"], "b": r["model_b"]["name"], "verdict": r["verdict"],
              "awm": r["scores"]["final"], "qk_circuit": r["scores"]["qk_circuit"],
              "dims_confirmed": (r["evidence"].get("correspondence") or {}).get("fraction")}
             for r in records if is_derived(r["verdict"])]
    return {"nodes": nodes, "edges": edges, "families": families(nodes, edges), "pairs_compared": len(records),
            "pairs_ruled_out": len(ruled_out)}


class Groups:
    """Disjoint groups of names (union-find with path halving)."""

    def __init__(self, names):
        self.parent = {name: name for name in names}

    def find(self, name):
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def join(self, a, b):
        """Put a and b in one group; False when they already were."""
        root_a, root_b = self.find(a), self.find(b)
        self.parent[root_a] = root_b
        return root_a != root_b

    def groups(self):
        found = {}
        for name in self.parent:
            found.setdefault(self.find(name), []).append(name)
        return list(found.values())


def families(nodes, edges):
    """Connected groups of models under the derived edges, largest first."""
    groups = Groups(nodes)
    for edge in edges:
        groups.join(edge["a"], edge["b"])
    return sorted(groups.groups(), key=lambda group: (-len(group), group[0]))
