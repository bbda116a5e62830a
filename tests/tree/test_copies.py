"""Copies in the family tree: a copy is the same weights, every one of them, within its storage
precision; each quantized copy sits under the float model it was made from, two copies of one
model are siblings under it; every edge says how sure its direction is."""
import json

import factory
import pytest
import torch
from test_tree import HIDDEN, LAYERS, VOCAB, base_tensors, parents_of, tuned, undirected_pairs

from awm import cli
from awm.readers import open_model
from awm.readers.weight_sample import SAMPLE_ROWS, SAMPLE_SPOTS, read_sample
from awm.tree import copies
from awm.tree.links import CONFIDENCES

HEADS, KV_HEADS = 4, 2


def with_body(tensors, seed):
    """The rest of a Llama layer beside W_q / W_k: V, O, the MLP and the second norm."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(tensors)
    head_dim = HIDDEN // HEADS
    shapes = {"self_attn.v_proj.weight": (KV_HEADS * head_dim, HIDDEN), "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
              "mlp.gate_proj.weight": (2 * HIDDEN, HIDDEN), "mlp.up_proj.weight": (2 * HIDDEN, HIDDEN),
              "mlp.down_proj.weight": (HIDDEN, 2 * HIDDEN)}
    for i in range(LAYERS):
        for name, shape in shapes.items():
            out[f"model.layers.{i}.{name}"] = 0.05 * torch.randn(shape, generator=generator)
        out[f"model.layers.{i}.post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(HIDDEN, generator=generator)
    return out


def abliterated(tensors, seed):
    """Every residual writer projected off one direction, the embedding too: W_q / W_k untouched."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(HIDDEN, generator=generator)
    direction /= direction.norm()
    off = torch.eye(HIDDEN) - torch.outer(direction, direction)
    out = dict(tensors)
    for name, value in tensors.items():
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            out[name] = off @ value
    out["model.embed_tokens.weight"] = tensors["model.embed_tokens.weight"] @ off
    return out


def mlp_lora(tensors, seed, rank=4):
    """A LoRA merged into the MLP only."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(tensors)
    for name, value in tensors.items():
        if name.endswith("mlp.up_proj.weight"):
            out[name] = value + 0.02 * torch.randn(value.shape[0], rank, generator=generator) @ torch.randn(rank, value.shape[1], generator=generator)
    return out


def bf16(tensors):
    return {k: v.to(torch.bfloat16) for k, v in tensors.items()}


# ----------------------------------------------------------------------------- the copy rule
def test_a_resave_agrees_within_its_precision_and_a_light_bf16_fine_tune_does_not():
    weights = 0.02 * torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    half = weights.to(torch.bfloat16)
    assert copies.agree(weights, half, "F32", "BF16") and copies.agree(half, half.to(torch.float16), "BF16", "F16")
    assert copies.agree(weights, half.to(torch.float16), "F32", "F16")                # fp16 made through bf16
    # A 0.2 % change stored in bf16: most entries round back to the base's, not all.
    light = (weights + 0.002 * weights.std() * torch.randn(64, 96, generator=torch.Generator().manual_seed(1))).to(torch.bfloat16)
    assert (light == half).float().mean() > 0.5
    assert not copies.agree(half, light, "BF16", "BF16") and not copies.agree(weights, light, "F32", "BF16")
    assert not copies.agree(weights, weights.to(torch.float16), "F32", "Q8_0")        # a quantized type has no units


def test_the_original_of_two_copies_is_the_one_holding_finer_values():
    class Digest:
        def __init__(self, rows):
            self.rows = rows

        def kept_rows(self):
            return {0: (self.rows, self.rows, torch.ones(self.rows.shape[1]))}

        def weight_sample(self):
            return {}

    weights = torch.randn(8, 16, generator=torch.Generator().manual_seed(2))
    original, resaved = Digest(weights), Digest(weights.to(torch.bfloat16))
    assert copies.finer_original(original, resaved, "F32", "BF16") is original
    upcast = Digest(weights.to(torch.bfloat16).float())                  # a bf16 model saved as float32: either could be first
    assert copies.finer_original(upcast, resaved, "F32", "BF16") is None
    assert copies.finer_original(original, Digest(weights.clone()), "F32", "F32") is None


def test_the_sample_reads_a_few_rows_of_every_other_weight(tmp_path):
    tensors = with_body(base_tensors(0), 1)
    path = factory.write_safetensors_model(str(tmp_path / "m"), tensors, factory.llama_config(HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB),
                                           factory.byte_level_tokens(VOCAB))
    sample = read_sample(open_model(path), [0, 7])
    assert "layers.0.mlp.down_proj.weight" in sample and "layers.7.self_attn.o_proj.weight" in sample
    assert "embed_tokens.weight" in sample and "layers.3.mlp.down_proj.weight" not in sample
    assert not any(name.endswith(("q_proj.weight", "k_proj.weight")) for name in sample)        # compared as rows already
    assert sample["layers.0.mlp.up_proj.weight"].shape == (2 * SAMPLE_ROWS, HIDDEN)
    assert torch.equal(sample["layers.0.post_attention_layernorm.weight"], tensors["model.layers.0.post_attention_layernorm.weight"])
    start = int(SAMPLE_SPOTS[1] * 2 * HIDDEN)
    assert torch.equal(sample["layers.0.mlp.up_proj.weight"][SAMPLE_ROWS:], tensors["model.layers.0.mlp.up_proj.weight"][start:start + SAMPLE_ROWS])


# ----------------------------------------------------------------------------- a Hub-shaped family
@pytest.fixture(scope="module")
def hub_copies(tmp_path_factory):
    """A base, its instruct model and two fine-tunes of it, GGUFs of three of them (two formats
    of the instruct model), an abliterated and an MLP-only LoRA variant of the instruct model;
    beside them a bf16 base with a light (0.2 %) bf16 fine-tune."""
    root = tmp_path_factory.mktemp("hub-copies")
    config, tokens = factory.llama_config(HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB), factory.byte_level_tokens(VOCAB)
    base = with_body(base_tensors(110), 110)
    instruct = tuned(base, 111, 0.3)
    light_base = base_tensors(120)
    models = {"q-base": base, "q-instruct": instruct, "q-ft1": tuned(instruct, 112), "q-ft2": tuned(instruct, 113),
              "q-abliterated": abliterated(instruct, 114), "q-mlp-lora": mlp_lora(instruct, 115),
              "b-base": bf16(light_base), "b-light": bf16(tuned(light_base, 121, 0.002))}
    paths = [factory.write_safetensors_model(str(root / name), tensors, config, tokens) for name, tensors in models.items()]
    for name, quant in (("q-base", "Q8_0"), ("q-instruct", "Q8_0"), ("q-instruct", "Q5_0"), ("q-ft1", "Q8_0")):
        paths.append(factory.write_gguf(str(root / f"{name}.{quant}.gguf"), models[name], HEADS, KV_HEADS, tokens, quant, quant))
    library, results = str(root / "lib"), root / "map"
    assert cli.main(["--library", library, "--add", *paths, "--device", "cpu", "--quiet"]) == 0
    assert cli.main(["--library", library, "--map", "--results_dir", str(results), "--device", "cpu", "--quiet"]) == 0
    return json.loads((results / "lineage.json").read_text())["tree"]


def test_every_quantized_copy_sits_under_its_own_float_model(hub_copies):
    parents = parents_of(hub_copies)
    for copy, original in (("q-base.Q8_0.gguf", "q-base"), ("q-instruct.Q8_0.gguf", "q-instruct"),
                           ("q-instruct.Q5_0.gguf", "q-instruct"), ("q-ft1.Q8_0.gguf", "q-ft1")):
        assert set(parents[copy]) == {original}, (copy, parents[copy])
        assert parents[copy][original]["relation"] == "quantized" and parents[copy][original]["confidence"] == "measured"
    # Copies are leaves: never a parent, never in an undirected pair (two copies of the
    # instruct model are siblings under it, not each other's fine-tune).
    ggufs = {name for name in parents if name.endswith(".gguf")}
    assert not any(p in ggufs for found in parents.values() for p in found)
    assert not any({u["a"], u["b"]} & ggufs for u in hub_copies["undirected"])


def test_weights_beside_attention_tell_a_fine_tune_from_a_copy(hub_copies):
    parents, loose = parents_of(hub_copies), undirected_pairs(hub_copies)
    for variant in ("q-abliterated", "q-mlp-lora"):
        pair = loose[frozenset((variant, "q-instruct"))]
        assert pair["relation"] == "fine-tune" and pair["reason"].startswith(copies.ATTENTION_ONLY), pair
        assert not parents[variant]
    # The instruct model's other relatives are linked to it, not to a variant whose W_q / W_k are the same.
    for relative in ("q-base", "q-ft1", "q-ft2"):
        assert frozenset((relative, "q-instruct")) in loose and frozenset((relative, "q-abliterated")) not in loose
    pair = loose[frozenset(("b-base", "b-light"))]
    assert pair["relation"] == "fine-tune" and "same weights" not in pair["reason"]


def test_every_edge_has_a_confidence(hub_copies):
    found = [p["confidence"] for node in hub_copies["nodes"] for p in node["parents"]]
    assert found and set(found) <= set(CONFIDENCES) - {"undirected"}
    assert all(u["confidence"] == "undirected" for u in hub_copies["undirected"]) and hub_copies["undirected"]
    for node in hub_copies["nodes"]:
        measured = [p["name"] for p in node["parents"] if p["confidence"] == "measured"]
        assert node["hub"].get("base_model", []) == measured, node
