#!/usr/bin/env python
"""Cost and accuracy of the family tree on a library of known history.

    python benchmarks/tree_benchmark.py [--families 10] [--json asset/tree_benchmark.json]

Builds families of small models whose history is known by construction (a base, fine-tunes of
it, a grandchild, a linear merge with known coefficients, a width-pruned and a depth-stacked
child), adds every model to a library, scores every pair within a family (pairs across
families are independent and the tree reads only derived pairs), then times the tree step on
its own and checks every parent -> child edge (right with its direction, undirected with the
right partner, reversed, or under a wrong parent), every root, the merge coefficients and the
stacked model's layer sources against the truth, and counts the edges by confidence.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "tree")]

import factory  # noqa: E402
from test_tree import base_tensors, layers_of, linear, tuned  # noqa: E402

from awm.library import tasks as library_tasks  # noqa: E402
from awm.library.folder import Library  # noqa: E402
from awm.tree import build as family_tree  # noqa: E402
from awm.witnesses.verdict import PAPER_NULL  # noqa: E402

CPU = torch.device("cpu")
HIDDEN, LAYERS, VOCAB = 96, 8, 400


def family(number):
    """{name: (tensors, (parent, relation) or None)} of one family; names carry the number."""
    name = lambda role: f"f{number}-{role}"
    base = base_tensors(1000 + 17 * number)
    tunes = [tuned(base, 2000 + 17 * number + k) for k in range(5)]
    models = {name("base"): (base, None)}
    models.update({name(f"ft{k}"): (t, [(name("base"), "fine-tune")]) for k, t in enumerate(tunes)})
    models[name("grandchild")] = (tuned(tunes[0], 3000 + number), [(name("ft0"), "fine-tune")])
    models[name("merge")] = (linear([(0.35, tunes[1]), (0.65, tunes[2])]), [(name("ft1"), "merge"), (name("ft2"), "merge")])
    models[name("pruned")] = (factory.prune(base, torch.arange(80), list(range(LAYERS))), [(name("base"), "pruned")])
    models[name("stacked")] = (layers_of(base, list(range(6)) + list(range(2, 8))), [(name("base"), "stacked")])
    return models


def write(folder, name, tensors):
    hidden = tensors["model.embed_tokens.weight"].shape[1]
    layers = sum(k.endswith("q_proj.weight") for k in tensors)
    return factory.write_safetensors_model(os.path.join(folder, name), tensors, factory.llama_config(hidden, layers, 4, 2, VOCAB),
                                           factory.byte_level_tokens(VOCAB))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    truth, folder = {}, tempfile.mkdtemp(prefix="awm-tree-")
    paths, groups = [], []
    for number in range(args.families):
        members = family(number)
        groups.append(list(members))
        for name, (tensors, parents) in members.items():
            truth[name] = parents
            paths.append(write(folder, name, tensors))
    library = os.path.join(folder, "lib")
    options = library_tasks.options()
    started = time.perf_counter()
    library_tasks.add_models(paths, library, options, CPU)
    added = time.perf_counter()
    pairs = [(a, b) for group in groups for i, a in enumerate(group) for b in group[i + 1:]]
    outcomes = library_tasks.score_pairs(library, pairs, options, CPU, PAPER_NULL)
    records = [o["record"] for o in outcomes if "record" in o]
    scored = time.perf_counter()
    names = [n for group in groups for n in group]
    metas = {r[side]["name"]: r[side] for r in records for side in ("model_a", "model_b")}
    store = Library(library)
    tree = family_tree.build(names, records, metas, lambda name: store.open(name, CPU))
    tree_s = time.perf_counter() - scored
    found = {node["name"]: {(p["name"], p["relation"]): p for p in node["parents"]} for node in tree["nodes"]}
    edges = [(parent, child, relation) for child, parents in truth.items() for parent, relation in parents or ()]
    right = [e for e in edges if (e[0], e[2]) in found[e[1]]]
    loose = {frozenset((u["a"], u["b"])) for u in tree["undirected"]}
    undirected_right = [e for e in edges if e not in right and frozenset(e[:2]) in loose]
    reversed_ = [e for e in edges if any(p["name"] == e[1] for p in found[e[0]].values())]
    wrong_parent = [e for e in edges if found[e[1]] and not any(name == e[0] for name, _ in found[e[1]])]
    confidences = {}
    for parents in found.values():
        for p in parents.values():
            confidences[p["confidence"]] = confidences.get(p["confidence"], 0) + 1
    confidences["undirected"] = len(tree["undirected"])
    roots = {n for n, parents in truth.items() if not parents}
    found_roots = {n for n, parents in found.items() if not parents} - {u[k] for u in tree["undirected"] for k in ("a", "b")}
    extra = sum(len(parents) for parents in found.values()) - len(right)
    merge_errors = [abs(found[f"f{k}-merge"][(f"f{k}-ft{j}", "merge")]["weight"] - w)
                    for k in range(args.families) for j, w in ((1, 0.35), (2, 0.65)) if (f"f{k}-ft{j}", "merge") in found[f"f{k}-merge"]]
    stacked_sources = [n["layers"] for n in tree["nodes"] if n["name"].endswith("-stacked")]
    expected_layers = list(range(6)) + list(range(2, 8))
    layer_right = sum(layer["source_layer"] == expected_layers[layer["layer"]] and layer["source"].endswith("-base")
                      for layers in stacked_sources if layers for layer in layers)
    result = {
        "entries": len(names), "pairs_scored": len(records), "add_s": round(added - started, 1), "pairs_s": round(scored - added, 1),
        "tree_s": round(tree_s, 2), "edges": len(edges), "edges_right": len(right), "edge_accuracy": len(right) / len(edges),
        "edges_undirected_right_pair": len(undirected_right), "edges_reversed": len(reversed_),
        "edges_wrong_parent": len(wrong_parent), "confidence_mix": confidences,
        "extra_links": extra, "roots": len(roots), "roots_right": len(roots & found_roots),
        "undirected": len(tree["undirected"]), "max_merge_coefficient_error": max(merge_errors) if merge_errors else None,
        "merge_coefficients_found": len(merge_errors),
        "stacked_layers_right": layer_right, "stacked_layers": len(expected_layers) * args.families,
    }
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
