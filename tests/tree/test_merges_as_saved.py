"""Merges as merge tools save them: bf16 outputs of parents about 1.4 % apart (storage rounding
is then most of what a linear fit leaves), DARE and DARE-TIES with unequal weights and
densities, and SLERP with one t for attention and another for the MLP. Each merge is found with
its parents and its weights; a light bf16 fine-tune of a parent is not taken for a merge."""
import json

import factory
import pytest
import torch
from test_tree import HIDDEN, LAYERS, VOCAB, base_tensors, parents_of, slerp_coefficients, tuned

from awm import cli
from awm.tree import entrywise, tensor_types

TOLERANCE = 0.05        # on every weight, density and t


def bf16(tensors):
    return {k: v.to(torch.bfloat16) for k, v in tensors.items()}


def as_float(tensors):
    return {k: v.float() for k, v in tensors.items()}


def linear(parts):
    return {k: sum(w * t[k] for w, t in parts) for k in parts[0][1]}


def dare(base, models, weights, densities, elect_signs, seed=40):
    """mergekit's dare_linear / dare_ties: each change keeps a random share `density` of its
    entries, rescaled by 1 / density; dare_ties keeps per entry only the changes of the sign their
    weighted sum has, and divides by the weights of those kept."""
    generator = torch.Generator().manual_seed(seed)
    merged = {}
    for name, value in base.items():
        deltas = []
        for model, density in zip(models, densities):
            keep = torch.rand(value.shape, generator=generator) < density
            deltas.append(torch.where(keep, (model[name] - value) / density, torch.zeros_like(value)))
        stacked, w = torch.stack(deltas), torch.tensor(weights).view(-1, *[1] * value.dim())
        if elect_signs:
            agree = (torch.sign(stacked) == torch.sign((w * stacked).sum(0))) & (stacked != 0)
            merged[name] = value + (w * stacked * agree).sum(0) / (w * agree).sum(0).clamp_min(1e-12)
        else:
            merged[name] = value + (w * stacked).sum(0)
    return merged


def slerp_by_kind(first, second, t_attention, t_mlp, t_other=0.5):
    """mergekit's SLERP with a t per kind of tensor (self_attn, mlp, the rest)."""
    merged = {}
    for name in first:
        t = t_attention if "self_attn" in name else t_mlp if ".mlp." in name else t_other
        s0, s1 = slerp_coefficients(first, second, name, t)
        merged[name] = s0 * first[name] + s1 * second[name]
    return merged


def with_mlp_and_outputs(tensors, seed):
    """The rest of each layer (v_proj, o_proj and the MLP), which the weight sample reads."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"self_attn.v_proj": (HIDDEN // 2, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
              "mlp.gate_proj": (2 * HIDDEN, HIDDEN), "mlp.up_proj": (2 * HIDDEN, HIDDEN), "mlp.down_proj": (HIDDEN, 2 * HIDDEN)}
    extra = {f"model.layers.{i}.{name}.weight": 0.05 * torch.randn(shape, generator=generator)
             for i in range(LAYERS) for name, shape in shapes.items()}
    return {**tensors, **extra}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("merges-as-saved")
    base = as_float(bf16(with_mlp_and_outputs(base_tensors(140), 145)))
    ft1, ft2, ft3 = (as_float(bf16(tuned(base, seed, 0.01))) for seed in (141, 142, 143))
    models = {
        "base": base, "ft1": ft1, "ft2": ft2, "ft3": ft3,
        "ft1-light": tuned(ft1, 144, 0.002),
        "linear": linear([(0.7, ft1), (0.3, ft2)]),
        "dare-linear": dare(base, [ft1, ft2], [0.6, 0.4], [0.5, 0.7], elect_signs=False),
        "dare-ties": dare(base, [ft1, ft2], [0.7, 0.3], [0.6, 0.6], elect_signs=True),
        "slerp": slerp_by_kind(ft1, ft2, 0.45, 0.8),
    }
    tokens = factory.byte_level_tokens(VOCAB)
    paths = [factory.write_safetensors_model(str(root / name), bf16(tensors), factory.llama_config(HIDDEN, LAYERS, 4, 2, VOCAB), tokens)
             for name, tensors in models.items()]
    library, results = str(root / "lib"), root / "map"
    assert cli.main(["--library", library, "--add", *paths, "--device", "cpu", "--quiet"]) == 0
    assert cli.main(["--library", library, "--map", "--results_dir", str(results), "--device", "cpu", "--quiet"]) == 0
    tree = json.loads((results / "lineage.json").read_text())["tree"]
    return tree, parents_of(tree), {node["name"]: node for node in tree["nodes"]}


def weights(found):
    return {name: parent["weight"] for name, parent in found.items()}


def test_a_bf16_linear_merge_of_close_parents_is_found_with_its_weights(saved):
    _, parents, _ = saved
    found = parents["linear"]
    assert set(found) == {"ft1", "ft2"} and all(p["relation"] == "merge" for p in found.values()), found
    assert weights(found) == pytest.approx({"ft1": 0.7, "ft2": 0.3}, abs=TOLERANCE)


@pytest.mark.parametrize("child, method, expected, densities", [
    ("dare-linear", "DARE", {"ft1": 0.6, "ft2": 0.4}, {"ft1": 0.5, "ft2": 0.7}),
    ("dare-ties", "DARE-TIES", {"ft1": 0.7, "ft2": 0.3}, {"ft1": 0.6, "ft2": 0.6}),
])
def test_dare_merges_with_unequal_weights_name_parents_base_weights_and_densities(saved, child, method, expected, densities):
    _, parents, _ = saved
    found = parents[child]
    assert set(found) == {"ft1", "ft2"} and all(p["relation"] == "merge" for p in found.values()), found
    reason = found["ft1"]["direction"]
    assert "from base" in reason and f"({method}:" in reason, reason
    assert weights(found) == pytest.approx(expected, abs=TOLERANCE)
    assert {name: p["density"] for name, p in found.items()} == pytest.approx(densities, abs=TOLERANCE)


def test_slerp_with_its_own_t_for_attention_and_mlp_reports_both(saved):
    _, parents, nodes = saved
    assert set(parents["slerp"]) == {"ft1", "ft2"}
    by_kind = nodes["slerp"]["weights_by_kind"]
    assert by_kind["attention"] == pytest.approx({"ft1": 0.55, "ft2": 0.45}, abs=TOLERANCE)
    assert by_kind["mlp"] == pytest.approx({"ft1": 0.2, "ft2": 0.8}, abs=TOLERANCE)
    assert "attention and MLP are mixed with different coefficients" in parents["slerp"]["ft1"]["direction"]
    # A plain linear merge mixes every kind alike.
    plain = nodes["linear"]["weights_by_kind"]
    assert plain["attention"] == pytest.approx(plain["mlp"], abs=TOLERANCE)


def test_a_light_bf16_fine_tune_and_the_other_relatives_are_no_merges(saved):
    tree, parents, _ = saved
    assert not any(p["relation"] == "merge" for name in ("base", "ft1", "ft2", "ft3", "ft1-light") for p in parents[name].values())
    linked = {(p, name) for name, found in parents.items() for p in found} | {(u["a"], u["b"]) for u in tree["undirected"]}
    assert ("ft1", "ft1-light") in linked or ("ft1-light", "ft1") in linked


def test_the_entrywise_fit_recovers_unequal_scales_and_ignores_rounding():
    """The fit on its own: a DARE mix of two changes, rounded to bf16, leaves nothing beyond
    rounding; an unrelated change of the same size leaves most of itself."""
    generator = torch.Generator().manual_seed(7)
    base = torch.randn(50_000, generator=generator)
    deltas = 0.02 * torch.randn(2, 50_000, generator=generator)
    keep = torch.rand(2, 50_000, generator=generator) < torch.tensor([[0.5], [0.8]])
    child = (base + (0.6 * keep[0] * deltas[0] / 0.5 + 0.4 * keep[1] * deltas[1] / 0.8)).to(torch.bfloat16).float()
    tolerance = entrywise.unit(child.double(), 7).float()
    residual, picked, scales = entrywise._fit(child - base, deltas, tolerance)
    assert residual < 0.02
    assert scales == pytest.approx([1.2, 0.5, 1.2, 0.5], abs=0.03)
    unrelated = (base + 0.02 * torch.randn(50_000, generator=generator)).to(torch.bfloat16).float()
    assert entrywise._fit(unrelated - base, deltas, tolerance)[0] > 0.5


def test_weights_by_kind_are_undetermined_where_the_parents_agree():
    generator = torch.Generator().manual_seed(3)
    a = {"layers.0.mlp.up_proj.weight": torch.randn(4, 8, generator=generator), "layers.0.input_layernorm.weight": torch.ones(8)}
    b = {"layers.0.mlp.up_proj.weight": torch.randn(4, 8, generator=generator), "layers.0.input_layernorm.weight": torch.ones(8)}
    child = {name: 0.25 * a[name] + 0.75 * b[name] for name in a}
    found = tensor_types.weights_by_kind(child, [a, b])
    assert found["mlp"] == pytest.approx([0.25, 0.75]) and found["norm"] is None
