"""Light depth pruning and the children of a merge: a model a layer was dropped from is the
pruned model's parent (never stacked from it, though its neighbouring layers look alike), and a
light fine-tune or a re-save of a merge is linked under the merge, not fitted as a second merge
of the same parents."""
import json

import factory
import pytest
import torch
from test_tree import HIDDEN, LAYERS, VOCAB, base_tensors, layers_of, linear, parents_of, tuned

from awm import cli
from awm.tree import build as family_tree


def with_alike_neighbours(tensors, seed, keep=0.9):
    """Each layer's W_q / W_k mostly its predecessor's, as in trained models, whose neighbouring
    layers score high against each other: a dropped layer's neighbour then looks like its copy."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(tensors)
    for i in range(1, LAYERS):
        for kind in ("q_proj", "k_proj"):
            name, before = f"model.layers.{i}.self_attn.{kind}.weight", f"model.layers.{i - 1}.self_attn.{kind}.weight"
            fresh = torch.randn(out[name].shape, generator=generator) * out[before].std()
            out[name] = keep * out[before] + (1 - keep ** 2) ** 0.5 * fresh
    return out


def dropped(tensors, layer):
    """The model without one layer, the rest renumbered."""
    out = {"model.embed_tokens.weight": tensors["model.embed_tokens.weight"]}
    for new, old in enumerate(i for i in range(LAYERS) if i != layer):
        out.update({k.replace(f"model.layers.{old}.", f"model.layers.{new}."): v for k, v in tensors.items()
                    if k.startswith(f"model.layers.{old}.")})
    return out


STUDENT_LAYERS = [1, 3, 5, 7]       # every other layer (5 among them: only the base holds it)


@pytest.fixture(scope="module")
def depth_and_merges(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth-merges")
    tokens = factory.byte_level_tokens(VOCAB)
    base = with_alike_neighbours(base_tensors(130), 131)
    ft1, ft2 = tuned(base, 132, 0.1), tuned(base, 133, 0.1)
    merge = linear([(0.4, ft1), (0.6, ft2)])
    models = {"base": (base, LAYERS), "ft1": (ft1, LAYERS), "ft2": (ft2, LAYERS), "merge": (merge, LAYERS),
              "merge-tuned": (tuned(merge, 134, 0.005), LAYERS),
              "merge-bf16": ({k: v.to(torch.bfloat16) for k, v in merge.items()}, LAYERS),
              "pruned": (dropped(base, 5), LAYERS - 1),
              "student": (layers_of(base, STUDENT_LAYERS), len(STUDENT_LAYERS))}
    paths = [factory.write_safetensors_model(str(root / name), tensors, factory.llama_config(HIDDEN, layers, 4, 2, VOCAB), tokens)
             for name, (tensors, layers) in models.items()]
    library, results = str(root / "lib"), root / "map"
    assert cli.main(["--library", library, "--add", *paths, "--device", "cpu", "--quiet"]) == 0
    assert cli.main(["--library", library, "--map", "--results_dir", str(results), "--device", "cpu", "--quiet"]) == 0
    return json.loads((results / "lineage.json").read_text())["tree"]


def test_an_every_other_layer_student_is_pruned_with_the_layers_it_kept(depth_and_merges):
    parents = parents_of(depth_and_merges)
    assert set(parents["student"]) == {"base"} and parents["student"]["base"]["relation"] == "pruned"
    layers = next(node["layers"] for node in depth_and_merges["nodes"] if node["name"] == "student")
    assert [(layer["source"], layer["source_layer"]) for layer in layers] == [("base", i) for i in STUDENT_LAYERS]
    assert "keeps layers 1, 3, 5, 7" in parents["student"]["base"]["direction"]


def test_light_depth_pruning_is_pruned_not_stacked(depth_and_merges):
    parents = parents_of(depth_and_merges)
    assert set(parents["pruned"]) == {"base"} and parents["pruned"]["base"]["relation"] == "pruned"
    assert not any(p["relation"] == "stacked" for found in parents.values() for p in found.values())


def test_a_fine_tune_and_a_resave_of_a_merge_sit_under_it(depth_and_merges):
    parents = parents_of(depth_and_merges)
    assert set(parents["merge"]) == {"ft1", "ft2"} and all(p["relation"] == "merge" for p in parents["merge"].values())
    for child, relation in (("merge-tuned", "fine-tune"), ("merge-bf16", "copy")):
        assert set(parents[child]) == {"merge"}, (child, parents[child])
        assert parents[child]["merge"]["relation"] == relation and parents[child]["merge"]["confidence"] == "inferred"
    # The fine-tunes' base lies off the line between them: it is never placed under their merge;
    # and the merge's sources are never fitted as a mix of the merge's own children.
    assert "merge" not in parents["base"]
    assert not parents["ft1"] and not parents["ft2"] and not parents["base"]


def test_the_stacked_check_wants_every_layer_alike(monkeypatch):
    """Unit: a deeper model one of whose layers matches only a neighbour is not stacked."""
    def stacked(distances):
        traced = [("p", i, d, 99.0 if d < 0.1 else 60.0) for i, d in enumerate(distances)]
        monkeypatch.setattr(family_tree.evidence, "layer_sources", lambda child, parents: traced)
        builder = family_tree.TreeBuilder(["child", "p"], {}, None, lambda name: name)
        return builder._stacked("child", "p")

    assert stacked([0.0] * 10)                                   # verbatim up-scaling
    assert stacked([0.03, 0.04, 0.05, 0.04, 0.03, 0.05, 0.04, 0.03, 0.04, 0.05])   # up-scaled, then trained alike
    assert not stacked([0.0] * 9 + [0.3])                        # one layer dropped from it: only a neighbour matches
