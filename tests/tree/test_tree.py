"""The family tree on a zoo whose history is known by construction: a base with three
fine-tunes and a grandchild, a width-pruned child, a linear merge with known coefficients, a
TIES merge, a depth-stacked model, a layer-wise merge of two parents, and unrelated roots.
Every edge, direction, relation, coefficient and layer source is checked."""
import json
import os

import factory
import pytest
import torch

from awm import cli
from awm.tree import build as family_tree
from awm.tree import evidence as tree_evidence
from awm.tree import pairs as tree_pairs
from awm.tree.lineage import families

HIDDEN, LAYERS, VOCAB = 96, 8, 400
SLERP_T = [0, 0.5, 0.3, 0.7, 1]              # mergekit's usual t gradient


def base_tensors(seed):
    """A body whose dims differ from layer to layer and an anisotropic embedding, as trained ones."""
    return factory.structured_llama_tensors(hidden=HIDDEN, layers=LAYERS, heads=4, kv_heads=2, vocab=VOCAB, seed=seed)


def tuned(tensors, seed, amount=0.05):
    generator = torch.Generator().manual_seed(seed)
    return {k: v + amount * v.std() * torch.randn(v.shape, generator=generator) for k, v in tensors.items()}


def linear(parts):
    return {k: sum(w * t[k] for w, t in parts) for k in parts[0][1]}


def ties(base, models, density=0.5):
    """TIES: trim each task vector to its largest entries, elect a sign per entry, average the agreeing ones."""
    merged = {}
    for name, value in base.items():
        deltas = []
        for model in models:
            delta = model[name] - value
            threshold = delta.abs().flatten().kthvalue(max(1, int((1 - density) * delta.numel()))).values
            deltas.append(torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta)))
        stacked = torch.stack(deltas)
        sign = torch.sign(stacked.sum(0))
        agree = (torch.sign(stacked) == sign) & (stacked != 0)
        merged[name] = value + (stacked * agree).sum(0) / agree.sum(0).clamp_min(1)
    return merged


def slerp(first, second, t):
    """SLERP per tensor between two models, as mergekit computes it (flattened tensors, angle of
    their normalised copies), with t given per layer (None for tensors outside the layers: 0.5)."""
    merged = {}
    for name, a in first.items():
        b = second[name]
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        weight = 0.5 if layer is None else t[layer]
        s0, s1 = slerp_coefficients(first, second, name, weight)
        merged[name] = s0 * a + s1 * b
    return merged


def slerp_coefficients(first, second, name, weight):
    """The two coefficients SLERP at t = weight puts on one tensor (a plain interpolation when
    the two are nearly parallel, as mergekit does above a cosine of 0.9995)."""
    a, b = first[name].double().flatten(), second[name].double().flatten()
    cosine = float((a @ b) / (a.norm() * b.norm()))
    if abs(cosine) > 0.9995:
        return 1 - weight, weight
    angle = torch.arccos(torch.tensor(cosine))
    return float(torch.sin((1 - weight) * angle) / torch.sin(angle)), float(torch.sin(weight * angle) / torch.sin(angle))


def gradient(anchors, layers):
    """mergekit's t gradient: anchor values spread evenly over the layers, linear between them."""
    import numpy as np

    return list(np.interp(np.linspace(0, 1, layers), np.linspace(0, 1, len(anchors)), anchors))


def dare(base, models, density=0.5, seed=5):
    """DARE (linear): each change keeps a random share `density` of its entries, rescaled by 1 / density; the changes are added."""
    generator = torch.Generator().manual_seed(seed)
    merged = {}
    for name, value in base.items():
        change = torch.zeros_like(value)
        for model in models:
            keep = torch.rand(value.shape, generator=generator) < density
            change += torch.where(keep, (model[name] - value) / density, torch.zeros_like(value)) / len(models)
        merged[name] = value + change
    return merged


def layers_of(tensors, picks):
    """A model whose layer j is layer picks[j] of tensors (the embedding kept)."""
    out = {"model.embed_tokens.weight": tensors["model.embed_tokens.weight"]}
    for new, old in enumerate(picks):
        for name, value in tensors.items():
            if name.startswith(f"model.layers.{old}."):
                out[name.replace(f"model.layers.{old}.", f"model.layers.{new}.")] = value.clone()
    return out


def spliced(first, second, split):
    out = dict(first)
    out.update({k: v for k, v in second.items() if k.startswith("model.layers.") and int(k.split(".")[2]) >= split})
    return out


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    base = base_tensors(0)
    ft1, ft2, ft3 = tuned(base, 1), tuned(base, 2), tuned(base, 3)
    models = {
        "base": base, "ft1": ft1, "ft2": ft2, "ft3": ft3, "grandchild": tuned(ft1, 4),
        "pruned": factory.prune(base, torch.arange(80), list(range(LAYERS))),
        "linear-merge": linear([(0.3, ft2), (0.7, ft3)]),
        "ties-merge": ties(base, [ft1, ft2]),
        "dare-merge": dare(base, [ft2, ft3]),
        "task-merge": linear([(-0.2, base), (0.6, ft1), (0.6, ft3)]),         # task arithmetic, scales 0.6
        "slerp-merge": slerp(ft1, ft3, gradient(SLERP_T, LAYERS)),
        "stacked": layers_of(base, list(range(6)) + list(range(2, 8))),
        "layerwise": spliced(ft2, ft3, 4),
        "other": base_tensors(7), "another": base_tensors(8),
    }
    paths = []
    for name, tensors in models.items():
        hidden = tensors["model.embed_tokens.weight"].shape[1]
        layers = sum(k.endswith("q_proj.weight") for k in tensors)
        paths.append(factory.write_safetensors_model(str(root / "models" / name), tensors,
                                                     factory.llama_config(hidden, layers, 4, 2, VOCAB), factory.byte_level_tokens(VOCAB)))
    library, results = str(root / "lib"), root / "map"
    assert cli.main(["--library", library, "--add", *paths, "--device", "cpu", "--quiet"]) == 0
    assert cli.main(["--library", library, "--map", "--results_dir", str(results), "--device", "cpu", "--quiet"]) == 0
    return {**json.loads((results / "lineage.json").read_text()), "library": library}


def parents_of(tree):
    return {node["name"]: {p["name"]: p for p in node["parents"]} for node in tree["nodes"]}


def test_every_model_is_a_node_and_families_never_mix(zoo):
    tree = zoo["tree"]
    assert sorted(n["name"] for n in tree["nodes"]) == sorted(zoo["nodes"])
    linked = {(p["name"], node["name"]) for node in tree["nodes"] for p in node["parents"]}
    assert not any({"other", "another"} & set(link) for link in linked)
    assert ["other"] in families(zoo["nodes"], zoo["edges"]) and ["another"] in families(zoo["nodes"], zoo["edges"])


def test_the_star_its_grandchild_and_the_roots(zoo):
    parents = parents_of(zoo["tree"])
    for child in ("ft1", "ft2", "ft3"):
        assert set(parents[child]) == {"base"} and parents[child]["base"]["relation"] == "fine-tune"
    # Each edge says what decided it: the base of the TIES and DARE merges for the fine-tunes they
    # merge, the grandchild's parent having its own parent above.
    for child in ("ft1", "ft2", "ft3"):
        assert parents[child]["base"]["direction"].startswith("structure: the merge "), parents[child]
    assert parents["grandchild"]["ft1"]["direction"].startswith("one parent: ft1's parent is known")
    assert all(0 < parents[child]["base"]["change"] < 0.2 for child in ("ft1", "ft2", "ft3"))
    assert set(parents["grandchild"]) == {"ft1"} and parents["grandchild"]["ft1"]["relation"] == "fine-tune"
    roots = {name for name, found in parents.items() if not found}
    assert roots == {"base", "other", "another"} and not zoo["tree"]["undirected"]


def test_structural_children(zoo):
    parents = parents_of(zoo["tree"])
    assert set(parents["pruned"]) == {"base"} and parents["pruned"]["base"]["relation"] == "pruned"
    assert parents["pruned"]["base"]["direction"].startswith("structure: pruned")
    assert set(parents["stacked"]) == {"base"} and parents["stacked"]["base"]["relation"] == "stacked"
    layers = next(n["layers"] for n in zoo["tree"]["nodes"] if n["name"] == "stacked")
    assert [(layer["source"], layer["source_layer"]) for layer in layers] == [("base", i) for i in list(range(6)) + list(range(2, 8))]
    assert all(layer["score"] > 99.99 for layer in layers)


def test_the_linear_merge_and_its_coefficients(zoo):
    merge = parents_of(zoo["tree"])["linear-merge"]
    assert set(merge) == {"ft2", "ft3"} and all(p["relation"] == "merge" for p in merge.values())
    assert merge["ft2"]["weight"] == pytest.approx(0.3, abs=0.05) and merge["ft3"]["weight"] == pytest.approx(0.7, abs=0.05)
    assert "weighted average" in merge["ft2"]["direction"]


def test_the_ties_and_dare_merges_name_their_parents_and_densities(zoo):
    for child, parents, method in (("ties-merge", {"ft1", "ft2"}, "TIES"), ("dare-merge", {"ft2", "ft3"}, "DARE")):
        merge = parents_of(zoo["tree"])[child]
        # Equal weights: TIES averages the agreeing entries, this DARE adds halves.
        assert set(merge) == parents and all(p["relation"] == "merge" and p["weight"] == pytest.approx(0.5, abs=0.05)
                                             for p in merge.values()), merge
        assert f"({method}:" in next(iter(merge.values()))["direction"]
        # Each change kept half its entries (TIES: its largest half; DARE: a random half).
        assert all(p["density"] == pytest.approx(0.5, abs=0.05) for p in merge.values()), merge


def test_task_arithmetic_names_its_base_and_scales(zoo):
    merge = parents_of(zoo["tree"])["task-merge"]
    assert set(merge) == {"ft1", "ft3"} and all(p["weight"] == pytest.approx(0.6, abs=0.01) for p in merge.values())
    assert merge["ft1"]["direction"].startswith("structure: task arithmetic: base plus its parents' changes")


def test_a_slerp_merge_with_a_t_gradient_gets_its_coefficients_per_layer(zoo, tmp_path):
    merge = parents_of(zoo["tree"])["slerp-merge"]
    assert set(merge) == {"ft1", "ft3"} and "change over the layers" in merge["ft1"]["direction"]
    node = next(n for n in zoo["tree"]["nodes"] if n["name"] == "slerp-merge")
    base = base_tensors(0)
    ft1, ft3 = tuned(base, 1), tuned(base, 3)
    t = gradient(SLERP_T, LAYERS)
    assert {row["layer"] for row in node["coefficients"]} == {0, 2, 5, 7}          # the digest's row layers
    for row in node["coefficients"]:
        name = f"model.layers.{row['layer']}.self_attn.{row['tensor']}_proj.weight"
        expected = slerp_coefficients(ft1, ft3, name, t[row["layer"]])
        assert [row["weights"]["ft1"], row["weights"]["ft3"]] == pytest.approx(expected, abs=0.01), row


def test_the_layerwise_merge_traces_every_layer(zoo):
    merge = parents_of(zoo["tree"])["layerwise"]
    assert set(merge) == {"ft2", "ft3"} and all(p["relation"] == "merge" and p["weight"] is None for p in merge.values())
    layers = next(n["layers"] for n in zoo["tree"]["nodes"] if n["name"] == "layerwise")
    assert [(layer["source"], layer["source_layer"]) for layer in layers] == [("ft2", i) for i in range(4)] + [("ft3", i) for i in range(4, 8)]


def test_two_fine_tunes_alone_stay_undirected(tmp_path):
    base = base_tensors(0)
    pairs = []
    for name, tensors in (("a", base), ("b", tuned(base, 1))):
        pairs.append(factory.write_safetensors_model(str(tmp_path / name), tensors, factory.llama_config(HIDDEN, LAYERS, 4, 2, VOCAB),
                                                     factory.byte_level_tokens(VOCAB)))
    from awm.comparison.digest import digest_path
    from awm.comparison.pair import compare_digests
    from awm.witnesses.verdict import PAPER_NULL

    digests = {name: digest_path(path, torch.device("cpu")) for name, path in zip("ab", pairs)}
    record = compare_digests(digests["a"], digests["b"], torch.device("cpu"), PAPER_NULL, progress=False)
    record["model_a"]["name"], record["model_b"]["name"] = "a", "b"
    tree = family_tree.build(["a", "b"], [record], {n: r for n, r in (("a", record["model_a"]), ("b", record["model_b"]))}, digests.get)
    assert all(not node["parents"] for node in tree["nodes"])
    (pair,) = tree["undirected"]
    assert {pair["a"], pair["b"]} == {"a", "b"} and pair["relation"] == "fine-tune" and "nothing decides" in pair["reason"]


def write_lora_adapter(folder, base, base_path, rank=4, seed=27):
    """A PEFT LoRA adapter folder on `base_path`: rank-4 updates of every layer's W_q and W_k."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    updates = {}
    for name, weight in base.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            module = "base_model.model." + name[:-len(".weight")]
            updates[module + ".lora_A.weight"] = 0.3 * torch.randn(rank, weight.shape[1], generator=generator)
            updates[module + ".lora_B.weight"] = 0.1 * weight.std() * torch.randn(weight.shape[0], rank, generator=generator)
    os.makedirs(folder, exist_ok=True)
    save_file(updates, os.path.join(folder, "adapter_model.safetensors"))
    with open(os.path.join(folder, "adapter_config.json"), "w") as out:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "k_proj"],
                   "base_model_name_or_path": base_path}, out)
    return folder


@pytest.fixture(scope="module")
def structural_zoo(tmp_path_factory):
    """The structural relations: upcycled (experts), multimodal (a vision tower), quantized (a
    GGUF), depth-pruned, and a copy; each from a base that three fine-tunes branch from."""
    root = tmp_path_factory.mktemp("structure")
    base = base_tensors(20)
    config = factory.llama_config(HIDDEN, LAYERS, 4, 2, VOCAB)
    tokens = factory.byte_level_tokens(VOCAB)
    models = {"base": (base, config), "ft-a": (tuned(base, 21), config), "ft-b": (tuned(base, 22), config),
              "ft-c": (tuned(base, 23), config),
              "moe": (tuned(base, 24, 0.01), {**config, "model_type": "mixtral", "num_local_experts": 4}),
              "vision": (tuned(base, 25, 0.01), {**config, "vision_config": {"hidden_size": 32}}),
              "shallow": (layers_of(tuned(base, 26, 0.01), [0, 1, 2, 3, 6, 7]), factory.llama_config(HIDDEN, 6, 4, 2, VOCAB)),
              "loner": (base_tensors(30), config), "loner-copy": (base_tensors(30), config)}
    paths = [factory.write_safetensors_model(str(root / name), tensors, cfg, tokens) for name, (tensors, cfg) in models.items()]
    paths.append(factory.write_gguf(str(root / "base.Q8_0.gguf"), base, 4, 2, tokens))
    paths.append(write_lora_adapter(str(root / "ft-lora"), base, paths[0]))
    library, results = str(root / "lib"), root / "map"
    assert cli.main(["--library", library, "--add", *paths, "--device", "cpu", "--quiet"]) == 0
    assert cli.main(["--library", library, "--map", "--results_dir", str(results), "--device", "cpu", "--quiet"]) == 0
    return {**json.loads((results / "lineage.json").read_text()), "cards": results / "cards"}


def test_structural_relations_fix_their_direction(structural_zoo):
    parents = parents_of(structural_zoo["tree"])
    for child, relation in (("moe", "upcycled"), ("vision", "multimodal"), ("shallow", "pruned"), ("base.Q8_0.gguf", "quantized"),
                            ("ft-lora", "adapter")):
        assert set(parents[child]) == {"base"}, (child, parents[child])
        assert parents[child]["base"]["relation"] == relation and parents[child]["base"]["direction"].startswith(f"structure: {relation}")
    # Measured where the weights show the child was made from the parent (rounded to fewer bits,
    # a low-rank update); inferred where only a prior about shapes says which way.
    confidence = {child: parents[child]["base"]["confidence"] for child in ("moe", "vision", "shallow", "base.Q8_0.gguf", "ft-lora")}
    assert confidence == {"moe": "inferred", "vision": "inferred", "shallow": "inferred", "base.Q8_0.gguf": "measured",
                          "ft-lora": "measured"}
    # Three fine-tunes beside their base: nothing about those edges says which way they point
    # (how many branch from the base does not), so they stay undirected with the base.
    loose = undirected_pairs(structural_zoo["tree"])
    for child in ("ft-a", "ft-b", "ft-c"):
        assert not parents[child]
        pair = loose[frozenset(("base", child))]
        assert pair["relation"] == "fine-tune" and "nothing decides" in pair["reason"] and pair["confidence"] == "undirected"


def test_the_tree_in_the_hubs_terms(structural_zoo):
    """Each node declares its base as a model card would: base_model and base_model_relation in
    the Hub's vocabulary, in lineage.json and as cards/<model>.md front matter; only for
    directions the weights measured."""
    import yaml

    hub = {node["name"]: node["hub"] for node in structural_zoo["tree"]["nodes"]}
    expected = {"base.Q8_0.gguf": "quantized", "ft-lora": "adapter"}
    for name, relation in expected.items():
        assert hub[name] == {"base_model": ["base"], "base_model_relation": relation}, (name, hub[name])
    assert hub["base"] == {} and hub["loner"] == {} and hub["loner-copy"] == {}      # roots and copies declare nothing
    for name in ("ft-a", "moe", "vision", "shallow"):        # undirected, or directed by a prior on shapes only
        assert hub[name] == {}, (name, hub[name])
    card = (structural_zoo["cards"] / "ft-lora.md").read_text()
    assert card.startswith("---\n") and yaml.safe_load(card.split("---")[1]) == hub["ft-lora"]
    assert not (structural_zoo["cards"] / "base.md").exists()


def test_dtype_resaves_are_copies_and_a_light_fine_tune_is_not(tmp_path):
    """fp32 -> bf16 -> fp16 re-saves differ by their rounding (about 1e-3 for bf16): copies, with
    the tolerance of the coarser precision; a fine-tune changed by 1 % is not."""
    base = base_tensors(40)
    config = factory.llama_config(HIDDEN, LAYERS, 4, 2, VOCAB)
    tokens = factory.byte_level_tokens(VOCAB)
    models = {"base-fp32": base, "base-bf16": {k: v.to(torch.bfloat16) for k, v in base.items()},
              "base-fp16": {k: v.to(torch.bfloat16).to(torch.float16) for k, v in base.items()},
              "ft-light": tuned(base, 41, 0.01)}
    paths = [factory.write_safetensors_model(str(tmp_path / name), tensors, config, tokens) for name, tensors in models.items()]
    library, results = str(tmp_path / "lib"), tmp_path / "map"
    assert cli.main(["--library", library, "--add", *paths, "--device", "cpu", "--quiet"]) == 0
    assert cli.main(["--library", library, "--map", "--results_dir", str(results), "--device", "cpu", "--quiet"]) == 0
    tree = json.loads((results / "lineage.json").read_text())["tree"]
    edges = {frozenset((u["a"], u["b"])): u["relation"] for u in tree["undirected"]}
    edges.update({frozenset((node["name"], p["name"])): p["relation"] for node in tree["nodes"] for p in node["parents"]})
    copies = {pair for pair, relation in edges.items() if relation == "copy"}
    assert len(copies) == 2 and all("ft-light" not in pair for pair in copies), edges
    assert [relation for pair, relation in edges.items() if "ft-light" in pair] == ["fine-tune"], edges
    # Both re-saves sit under the float32 original, which holds values bf16 cannot store.
    parents = parents_of(tree)
    for copy in ("base-bf16", "base-fp16"):
        assert set(parents[copy]) == {"base-fp32"} and parents[copy]["base-fp32"]["relation"] == "copy"
        assert parents[copy]["base-fp32"]["confidence"] == "measured"


def test_a_copy_stays_undirected(structural_zoo):
    parents = parents_of(structural_zoo["tree"])
    assert not parents["loner"] and not parents["loner-copy"]
    (pair,) = [u for u in structural_zoo["tree"]["undirected"] if {u["a"], u["b"]} == {"loner", "loner-copy"}]
    assert pair["relation"] == "copy" and "same weights" in pair["reason"]


def test_identify_says_where_a_suspect_sits(zoo, tmp_path):
    """A merge of two entries is placed as their merge, with its coefficients; the base as the
    parent of its structurally derived entries."""
    library = zoo["library"]
    base = base_tensors(0)
    merged = linear([(0.6, tuned(base, 1)), (0.4, tuned(base, 2))])             # ft1 and ft2 of the zoo
    suspect = factory.write_safetensors_model(str(tmp_path / "suspect"), merged, factory.llama_config(HIDDEN, LAYERS, 4, 2, VOCAB),
                                              factory.byte_level_tokens(VOCAB))
    output = tmp_path / "found.json"
    assert cli.main(["--library", library, "--identify", suspect, "--output", str(output), "--device", "cpu", "--quiet"]) == 0
    placement = json.loads(output.read_text())["placement"]
    weights = {p["name"]: p["weight"] for p in placement["parents"]}
    assert set(weights) == {"ft1", "ft2"} and all(p["relation"] == "merge" for p in placement["parents"])
    assert weights["ft1"] == pytest.approx(0.6, abs=0.05) and weights["ft2"] == pytest.approx(0.4, abs=0.05)
    copy = factory.write_safetensors_model(str(tmp_path / "base-again"), base, factory.llama_config(HIDDEN, LAYERS, 4, 2, VOCAB),
                                           factory.byte_level_tokens(VOCAB))
    assert cli.main(["--library", library, "--identify", copy, "--output", str(output), "--device", "cpu", "--quiet"]) == 0
    placement = json.loads(output.read_text())["placement"]
    assert [(p["name"], p["relation"]) for p in placement["parents"]] == [("base", "copy")]
    assert {(c["name"], c["relation"]) for c in placement["derived_from_it"]} >= {("pruned", "pruned"), ("stacked", "stacked")}


def test_the_python_api_returns_the_same_tree(zoo, tmp_path):
    import awm

    result = awm.map_library(zoo["library"], results_dir=tmp_path / "again", device="cpu")
    assert result.lineage["tree"] == zoo["tree"]
    matches, not_compared = found = awm.identify(factory.write_safetensors_model(
        str(tmp_path / "s"), tuned(base_tensors(0), 40), factory.llama_config(HIDDEN, LAYERS, 4, 2, VOCAB),
        factory.byte_level_tokens(VOCAB)), zoo["library"], device="cpu")
    assert matches and not not_compared and found.placement["parents"][0]["name"] == "base"


def test_a_broken_entry_is_listed_with_its_reason_and_the_rest_still_form_the_tree(tmp_path):
    base = base_tensors(50)
    models = {"base": base, "ft-a": tuned(base, 51), "ft-b": tuned(base, 52), "broken": tuned(base, 53)}
    config, tokens = factory.llama_config(HIDDEN, LAYERS, 4, 2, VOCAB), factory.byte_level_tokens(VOCAB)
    paths = [factory.write_safetensors_model(str(tmp_path / name), t, config, tokens) for name, t in models.items()]
    library = str(tmp_path / "lib")
    assert cli.main(["--library", library, "--add", *paths, "--exact", "--device", "cpu", "--quiet"]) == 0
    (tmp_path / "lib" / "broken" / "kernels.safetensors").write_bytes(b"not a kernel file")
    assert cli.main(["--library", library, "--map", "--results_dir", str(tmp_path / "map"), "--device", "cpu", "--quiet"]) == 0
    tree = json.loads((tmp_path / "map" / "lineage.json").read_text())["tree"]
    assert sorted(n["name"] for n in tree["nodes"]) == ["base", "ft-a", "ft-b"]
    (left,) = tree["not_compared"]
    assert left["name"] == "broken" and "kernels.safetensors" in left["reason"]


class Points(tree_evidence.RowSpace):
    """Models as plain vectors of weights: the row space's fits without reading any rows."""

    def __init__(self, vectors):
        self.names = list(vectors)
        stacked = torch.stack(list(vectors.values())).double().numpy()
        self.total = stacked @ stacked.T

    def stored_bits(self, name):
        return None                  # plain numbers, no storage format to round to


def test_a_child_holding_one_parents_weights_is_no_merge_of_that_parents_copies():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, generator=generator), torch.randn(500, generator=generator)
    merged = Points({"child": 0.3 * a + 0.7 * b, "a": a, "b": b})
    found = tree_evidence.best_merge(merged, "child", ["a", "b"])
    assert dict(zip(found.parents, found.weights)) == pytest.approx({"a": 0.3, "b": 0.7}, abs=1e-6)
    copies = Points({"child": a, "a-1": a.clone(), "a-2": a.clone(), "b": b})       # bodies kept whole, embeddings redrawn
    assert tree_evidence.best_merge(copies, "child", ["a-1", "a-2", "b"]) is None


@pytest.fixture(scope="module")
def hub_families(tmp_path_factory):
    """Families shaped like the Hub's. A base, its instruct model (a heavy change), three light
    fine-tunes and a GGUF of the instruct model; a base with three instruct versions; the same
    first family with the instruct model's config naming its base; a vision model whose language
    model is the text model's weights; a frankenmerge of two fine-tunes beside a depth up-scaled
    copy and a multimodal child of their base."""
    root = tmp_path_factory.mktemp("hub-families")
    config = factory.llama_config(HIDDEN, LAYERS, 4, 2, VOCAB)
    tokens = factory.byte_level_tokens(VOCAB)
    models, paths = {}, []
    for prefix, seed in (("h", 50), ("c", 60)):
        base = base_tensors(seed)
        instruct = tuned(base, seed + 1, 0.3)
        declared = {"_name_or_path": f"acme/{prefix}-base"} if prefix == "c" else {}
        models.update({f"{prefix}-base": (base, config), f"{prefix}-instruct": (instruct, {**config, **declared})})
        models.update({f"{prefix}-ft{k}": (tuned(instruct, seed + 2 + k, 0.05), config) for k in range(3)})
        if prefix == "h":
            paths.append(factory.write_gguf(str(root / "h-instruct.Q8_0.gguf"), instruct, 4, 2, tokens))
    versions = base_tensors(70)
    models["v-base"] = (versions, config)
    models.update({f"v-instruct{k}": (tuned(versions, 71 + k, 0.3), config) for k in range(3)})
    text = base_tensors(80)
    models.update({"t-text": (text, config), "t-vision": (text, {**config, "vision_config": {"hidden_size": 32}})})
    stitched = base_tensors(90)
    first, second = tuned(stitched, 91, 0.1), tuned(stitched, 92, 0.1)
    deep = factory.llama_config(HIDDEN, 12, 4, 2, VOCAB)
    models.update({"p-base": (stitched, config), "p-ft1": (first, config), "p-ft2": (second, config),
                   "p-franken": (spliced_layers(first, second), deep),
                   "p-upscaled": (layers_of(stitched, list(range(6)) + list(range(2, 8))), deep),
                   "p-vision": (tuned(stitched, 93, 0.01), {**config, "vision_config": {"hidden_size": 32}}),
                   "p-rotated": (rotated(stitched), {**config, "tie_word_embeddings": False})})
    paths += [factory.write_safetensors_model(str(root / name), tensors, cfg, tokens) for name, (tensors, cfg) in models.items()]
    library, results = str(root / "lib"), root / "map"
    assert cli.main(["--library", library, "--add", *paths, "--device", "cpu", "--quiet"]) == 0
    assert cli.main(["--library", library, "--map", "--results_dir", str(results), "--device", "cpu", "--quiet"]) == 0
    return json.loads((results / "lineage.json").read_text())["tree"]


def rotated(tensors, seed=94):
    """The residual stream rotated (a disguised copy: another hidden basis, the same shape)."""
    from awm.method import disguise

    with_head = {"lm_head.weight": tensors["model.embed_tokens.weight"].clone(), **tensors}
    return disguise.rotate_residual(with_head, LAYERS, disguise.random_rotation(HIDDEN, torch.Generator().manual_seed(seed)))


def spliced_layers(first, second):
    """mergekit's passthrough: layers 0-5 of one model, then layers 2-7 of another."""
    out = layers_of(first, list(range(6)))
    tail = layers_of(second, list(range(2, 8)))
    out.update({k.replace(f"model.layers.{int(k.split('.')[2])}.", f"model.layers.{int(k.split('.')[2]) + 6}."): v
                for k, v in tail.items() if k.startswith("model.layers.")})
    return out


def undirected_pairs(tree):
    return {frozenset((u["a"], u["b"])): u for u in tree["undirected"]}


def test_a_base_is_never_placed_under_its_instruct_model(hub_families):
    """Four models branch from the instruct model: that says nothing about which way its edges
    point, so they stay undirected (the base is never made its child); its GGUF is its copy."""
    parents, loose = parents_of(hub_families), undirected_pairs(hub_families)
    for k in range(3):
        assert not parents[f"h-ft{k}"] and "nothing decides" in loose[frozenset((f"h-ft{k}", "h-instruct"))]["reason"]
    assert set(parents["h-instruct.Q8_0.gguf"]) == {"h-instruct"}
    assert parents["h-instruct.Q8_0.gguf"]["h-instruct"]["relation"] == "quantized"
    assert not parents["h-base"] and not parents["h-instruct"]
    assert "nothing decides" in loose[frozenset(("h-base", "h-instruct"))]["reason"]


def test_a_declared_base_directs_its_own_edge(hub_families):
    parents = parents_of(hub_families)
    assert set(parents["c-instruct"]) == {"c-base"}
    assert parents["c-instruct"]["c-base"]["direction"].startswith("metadata: c-instruct's config or model card names c-base")
    assert all(set(parents[f"c-ft{k}"]) == {"c-instruct"} for k in range(3)) and not parents["c-base"]
    # The claim is labelled a claim; the fine-tunes below it follow from it, inferred.
    assert parents["c-instruct"]["c-base"]["confidence"] == "claim"
    assert all(parents[f"c-ft{k}"]["c-instruct"]["confidence"] == "inferred" for k in range(3))


def test_a_base_with_several_instruct_versions_stays_undirected(hub_families):
    """Three models branching from one do not make it their parent: it could be the child of
    one of them with the others its siblings' children. Nothing else decides here."""
    parents, loose = parents_of(hub_families), undirected_pairs(hub_families)
    assert not parents["v-base"] and all(not parents[f"v-instruct{k}"] for k in range(3))
    assert all(frozenset(("v-base", f"v-instruct{k}")) in loose for k in range(3))


def test_a_vision_model_on_the_text_models_own_weights_stays_undirected(hub_families):
    parents, loose = parents_of(hub_families), undirected_pairs(hub_families)
    assert not parents["t-text"] and not parents["t-vision"]
    pair = loose[frozenset(("t-text", "t-vision"))]
    assert pair["relation"] == "multimodal" and "extracted" in pair["reason"]


def test_a_frankenmerge_an_upscaled_copy_and_a_multimodal_child(hub_families):
    parents = parents_of(hub_families)
    franken = parents["p-franken"]
    assert set(franken) == {"p-ft1", "p-ft2"} and all(p["relation"] == "merge" for p in franken.values())
    layers = next(n["layers"] for n in hub_families["nodes"] if n["name"] == "p-franken")
    assert [(layer["source"], layer["source_layer"]) for layer in layers] == \
        [("p-ft1", i) for i in range(6)] + [("p-ft2", i) for i in range(2, 8)]
    # The fine-tunes are never the frankenmerge's children; with p-base they stay undirected
    # (three models branching from it do not make it their parent).
    loose = undirected_pairs(hub_families)
    for child in ("p-ft1", "p-ft2", "p-rotated"):
        assert not parents[child] and frozenset(("p-base", child)) in loose
    assert not parents["p-base"]
    assert set(parents["p-upscaled"]) == {"p-base"} and parents["p-upscaled"]["p-base"]["relation"] == "stacked"
    # The up-scaled model is made of p-base's layers: never the parent of p-base's branch (here
    # entered through the rotated copy, shallower than it and in another basis).
    assert "p-upscaled" not in parents["p-rotated"] and "p-rotated" not in parents["p-base"]
    assert set(parents["p-vision"]) == {"p-base"} and parents["p-vision"]["p-base"]["relation"] == "multimodal"


def test_a_model_card_declares_its_base(tmp_path):
    from awm.readers import architectures, model_card

    (tmp_path / "README.md").write_text("---\nlicense: mit\nbase_model:\n- acme/base-7b\nbase_model_relation: finetune\n---\n# card\n")
    assert model_card.card_base_models(str(tmp_path)) == ["acme/base-7b"]
    (tmp_path / "README.md").write_text("---\nbase_model: [unclosed\n---\n")
    assert model_card.card_base_models(str(tmp_path)) == []                 # a broken card claims nothing
    hints = architectures.lineage_hints({"_name_or_path": "acme/other"}, {}, ["acme/base-7b"])
    assert hints["declared_base"] == ["acme/base-7b", "acme/other"]
    fields = {"general.base_model.count": 2, "general.base_model.0.repo_url": "https://huggingface.co/acme/base-7b",
              "general.base_model.1.organization": "Acme", "general.base_model.1.name": "Tuned"}
    assert architectures.gguf_declared_bases(lambda key, default=None: fields.get(key, default)) == ["acme/base-7b", "Acme/Tuned"]


def test_directions_come_from_evidence_about_each_edge():
    from awm.tree import direction

    def run(edges, **evidence):
        found = direction.orient([direction.Edge(a, b, d, "fine-tune") for a, b, d in edges], direction.Evidence(**evidence))
        return {(p, c): why for p, c, _, why in found.directed}, {frozenset((e.a, e.b)): why for e, why in found.undirected}

    chain = [("base", "instruct", 0.3), ("instruct", "tune", 0.05)]
    directed, loose = run(chain)
    assert not directed and len(loose) == 2                                      # a chain alone: nothing decides
    directed, loose = run(chain, edge_claims=[("instruct", "tune", "metadata: tune's card names instruct")])
    assert list(directed) == [("instruct", "tune")] and frozenset(("base", "instruct")) in loose
    directed, _ = run(chain, parent_elsewhere={"base": "pruned from a wider model"})
    assert set(directed) == {("base", "instruct"), ("instruct", "tune")}         # one parent each, spread down the chain
    assert directed[("instruct", "tune")].startswith("one parent: instruct's parent is known")
    # A model many others branch from is not thereby their parent: a star stays undirected ...
    star = [("hub", f"leaf{k}", 0.05 + 0.001 * k) for k in range(3)]
    directed, loose = run([*star, ("hub", "far", 0.3)])
    assert not directed and all("nothing decides" in why for why in loose.values()) and len(loose) == 4
    # ... until something about one edge decides: then the hub's other edges follow from it.
    directed, loose = run([*star, ("hub", "far", 0.3)], edge_claims=[("far", "hub", "metadata: hub's card names far")])
    assert set(directed) == {("far", "hub"), *(("hub", f"leaf{k}") for k in range(3))} and not loose
    assert direction.confidence_of(directed[("far", "hub")]) == "claim"
    assert direction.confidence_of(directed[("hub", "leaf0")]) == "inferred"
    directed, loose = run(chain, edge_claims=[("base", "instruct", "a"), ("instruct", "base", "b")])
    assert "points both ways" in loose[frozenset(("base", "instruct"))]


def test_a_near_identity_alignment_still_shares_the_basis():
    """One swapped dim in the assignment (identity on 94 of 96 dims) must not switch merge detection off."""
    def record(fraction, stored):
        alignment = {"stored_order": stored, "identity_fraction": fraction}
        return {"model_a": {"name": "a"}, "model_b": {"name": "b"}, "verdict": "derived", "evidence": {"alignment": alignment}}

    assert tree_pairs.Pairs([record(94 / 96, False)]).shared_basis("a", "b")
    assert tree_pairs.Pairs([record(1.0, True)]).shared_basis("b", "a")
    assert not tree_pairs.Pairs([record(0.5, False)]).shared_basis("a", "b")                 # a permuted basis


def test_the_turn_at_a_chains_middle_is_the_cosine_of_its_angle():
    generator = torch.Generator().manual_seed(3)
    p, m, c = (torch.randn(300, generator=generator, dtype=torch.float64) for _ in range(3))
    slow = float(torch.dot(p - m, c - m) / ((p - m).norm() * (c - m).norm()))
    assert Points({"p": p, "m": m, "c": c}).turn("p", "m", "c") == pytest.approx(slow, abs=1e-12)


def test_siblings_trained_alike_are_untangled_and_a_real_chain_kept():
    """Three children of one base share a direction of change (one corpus), with strengths from
    light to strong: the smallest changes chain them. Each moves back along the lighter one's
    change toward the base, so each branches from the base; the lightest one's own fine-tune
    keeps its change and stays its child."""
    from awm.tree import direction

    generator = torch.Generator().manual_seed(5)
    size = 20_000
    base, shared = torch.randn(size, generator=generator), torch.randn(size, generator=generator)

    def step(scale):
        return scale * (0.3 * shared + torch.randn(size, generator=generator)) / size ** 0.5

    points = {"base": base, "light": base + step(0.1)}
    points.update({"mid": base + step(0.3), "strong": base + step(1.0), "grandchild": points["light"] + step(0.3)})
    space = Points(points)
    edge = lambda a, b: direction.Edge(a, b, space.distance(a, b), "fine-tune")
    chained = direction.Directions([("base", "light", edge("base", "light"), "given"), ("light", "mid", edge("light", "mid"), "given"),
                                    ("mid", "strong", edge("mid", "strong"), "given"),
                                    ("light", "grandchild", edge("light", "grandchild"), "given")])
    untangled = direction.untangle(chained, space.turn, edge)
    parents = {child: (parent, why) for parent, child, _, why in untangled.directed}
    assert {child: parent for child, (parent, _) in parents.items()} == {
        "light": "base", "mid": "base", "strong": "base", "grandchild": "light"}
    assert parents["strong"][1].startswith("siblings: strong moves back along ")
    assert parents["grandchild"][1] == "given"
    assert direction.untangle(chained, lambda *chain: None, edge).directed == chained.directed   # nothing measured: kept
