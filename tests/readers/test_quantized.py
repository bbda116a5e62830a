"""Quantized checkpoints: every layout read back to the float weights its own tooling encoded,
scored as derived from its parent, and every malformed part refused in one line."""
import json
import os
import re

import factory
import pytest
import quantizers
import torch
from test_cli import run_cli

from awm.errors import CheckpointError
from awm.readers import dequantize
from awm.readers.model_reader import ModelCheckpoint

HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB = 128, 2, 4, 2, 300


def gptq_config(bits, group, act_order=False, version="gptq"):
    return {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": act_order, "sym": False, "checkpoint_format": version}


def ct_config(storage, settings):
    return {"quant_method": "compressed-tensors", "format": storage, "ignore": ["lm_head"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": settings}}}


def ct(storage, **options):
    return lambda w: quantizers.compressed(w, storage, **options)[:2]


def ct_settings(storage, **options):
    return ct_config(storage, quantizers.compressed(torch.ones(64, 128), storage, **options)[2])


# (name, quantizer: weight -> (parts, float reference), quantization config, the label awm shows)
LAYOUTS = [
    ("gptq-4bit-g32", lambda w: quantizers.gptq(w, 4, 32), gptq_config(4, 32), "GPTQ 4-bit g32"),
    ("gptq-3bit-whole-rows", lambda w: quantizers.gptq(w, 3, -1, symmetric=True), gptq_config(3, -1), "GPTQ 3-bit"),
    ("gptq-8bit-act-order-v2", lambda w: quantizers.gptq(w, 8, 64, act_order=True, version="gptq_v2"),
     gptq_config(8, 64, True, "gptq_v2"), "GPTQ 8-bit g64 act-order v2"),
    ("gptq-2bit-g32-act-order", lambda w: quantizers.gptq(w, 2, 32, act_order=True), gptq_config(2, 32, True), "GPTQ 2-bit g32 act-order"),
    ("awq-gemm", lambda w: quantizers.awq_gemm(w, 64), {"quant_method": "awq", "bits": 4, "group_size": 64, "version": "gemm", "zero_point": True},
     "AWQ 4-bit g64 GEMM"),
    ("awq-gemv", lambda w: quantizers.awq_gemv(w, 32), {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemv", "zero_point": True},
     "AWQ 4-bit g32 GEMV"),
    ("fp8-block", lambda w: quantizers.fp8_block(w, 32), {"quant_method": "fp8", "weight_block_size": [32, 32], "activation_scheme": "dynamic"},
     "FP8 e4m3 block 32x32"),
    ("fp8-e5m2-channel", lambda w: quantizers.fp8_channel(w, torch.float8_e5m2), {"quant_method": "fbgemm_fp8"}, "FP8 e5m2 per-channel"),
    ("ct-pack-int4-group-asym", ct("pack-quantized", bits=4, group=32, symmetric=False),
     ct_settings("pack-quantized", bits=4, group=32, symmetric=False), "compressed-tensors pack-quantized int4 g32 asym"),
    ("ct-pack-int3-channel", ct("pack-quantized", bits=3, strategy="channel"), ct_settings("pack-quantized", bits=3, strategy="channel"),
     "compressed-tensors pack-quantized int3 per-channel"),
    ("ct-int8-block", ct("int-quantized", bits=8, strategy="block", block=(32, 64)),
     ct_settings("int-quantized", bits=8, strategy="block", block=(32, 64)), "compressed-tensors int-quantized int8 block 32x64"),
    ("ct-naive-int8-tensor", ct("naive-quantized", bits=8, strategy="tensor", symmetric=False),
     ct_settings("naive-quantized", bits=8, strategy="tensor", symmetric=False), "compressed-tensors naive-quantized int8 per-tensor asym"),
    ("ct-fp8-channel", ct("float-quantized", bits=8, kind="float", strategy="channel"),
     ct_settings("float-quantized", bits=8, kind="float", strategy="channel"), "compressed-tensors float-quantized fp8 per-channel"),
    ("bnb-nf4-double-quant", lambda w: quantizers.bnb_4bit(w, "nf4", True),
     {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
     "bitsandbytes NF4 double-quant"),
    ("bnb-fp4", lambda w: quantizers.bnb_4bit(w, "fp4", False, blocksize=128),
     {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}, "bitsandbytes FP4"),
    ("bnb-int8", quantizers.bnb_int8, {"quant_method": "bitsandbytes", "load_in_8bit": True}, "bitsandbytes LLM.int8"),
    ("mlx-4bit-g64", lambda w: quantizers.mlx(w, 4, 64), {"mlx": {"group_size": 64, "bits": 4}}, "MLX 4-bit g64"),
    ("mlx-3bit-g32", lambda w: quantizers.mlx(w, 3, 32), {"mlx": {"group_size": 32, "bits": 3}}, "MLX 3-bit g32"),
    ("mlx-8bit-g128", lambda w: quantizers.mlx(w, 8, 128), {"mlx": {"group_size": 128, "bits": 8}}, "MLX 8-bit g128"),
]


def write_quantized(directory, tensors, quantizer, quantization, modules=("q_proj", "k_proj", "v_proj", "o_proj")):
    """A quantized copy of `tensors` as a model folder; returns {weight name: float it encodes}."""
    copy, encoded = quantizers.quantized_copy(tensors, quantizer, modules)
    config = factory.llama_config(HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB)
    if "mlx" in quantization:
        config["quantization"] = quantization["mlx"]          # as mlx-lm writes it
    else:
        config["quantization_config"] = quantization
    factory.write_safetensors_model(str(directory), copy, config, factory.byte_level_tokens(VOCAB))
    return encoded


@pytest.fixture(scope="module")
def parent():
    return factory.random_llama_tensors(HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, seed=3)


@pytest.mark.parametrize("name, quantizer, quantization, label", LAYOUTS, ids=[row[0] for row in LAYOUTS])
def test_each_layout_reads_back_what_its_tooling_encoded(tmp_path, parent, name, quantizer, quantization, label):
    encoded = write_quantized(tmp_path / name, parent, quantizer, quantization)
    model = ModelCheckpoint(str(tmp_path / name))
    assert model.describe()["quantization"] == label and model.describe()["dtype"] == label
    for layer in range(LAYERS):
        w_q, w_k = model.query_key(layer)
        for got, stored in ((w_q, "q_proj"), (w_k, "k_proj")):
            expected = encoded[f"model.layers.{layer}.self_attn.{stored}.weight"].float()
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
            assert (got - parent[f"model.layers.{layer}.self_attn.{stored}.weight"]).abs().max() > 0   # really quantized


def test_mlx_quantized_embedding_is_read_by_rows(tmp_path, parent):
    """mlx-lm quantizes the embedding too; it is read in blocks of rows like a float one."""
    encoded = write_quantized(tmp_path / "mlx", parent, lambda w: quantizers.mlx(w, 4, 32), {"mlx": {"group_size": 32, "bits": 4}},
                              modules=("q_proj", "k_proj", "embed_tokens"))
    model = ModelCheckpoint(str(tmp_path / "mlx"))
    torch.testing.assert_close(model.read_embedding().float(), encoded["model.embed_tokens.weight"], rtol=1e-6, atol=1e-6)


def test_unpacking_bit_streams_by_definition():
    """Value k of a row at bits [k*b, (k+1)*b) of its little-endian words, for every width."""
    generator = torch.Generator().manual_seed(0)
    for bits in range(1, 9):
        values = torch.randint(0, 2 ** bits, (3, 64), generator=generator)
        stream = "".join("".join(str((int(v) >> i) & 1) for i in range(bits)) for v in values[0])
        words = [int(stream[i:i + 32][::-1], 2) for i in range(0, len(stream), 32)]
        packed = quantizers._pack_words(values.t(), bits).t().contiguous()
        assert [w & 0xFFFFFFFF for w in packed[0].tolist()] == words
        assert torch.equal(dequantize.unpack_bits(packed, bits, 64), values.to(torch.int32))


def test_gptq_v1_stores_zero_minus_one():
    """A symmetric 4-bit GPTQ layer in the original format has qzeros words 0x77777777."""
    parts, _ = quantizers.gptq(torch.randn(64, 128), 4, 32, symmetric=True)
    assert {w & 0xFFFFFFFF for w in parts["qzeros"].reshape(-1).tolist()} == {0x77777777}


def test_quantized_copy_is_derived_and_named_on_the_model_line(tmp_path):
    tensors = factory.structured_llama_tensors(hidden=HIDDEN, layers=LAYERS, heads=HEADS, kv_heads=KV_HEADS, vocab=900)
    config = factory.llama_config(HIDDEN, LAYERS, HEADS, KV_HEADS, 900)
    tokens = factory.byte_level_tokens(900)
    factory.write_safetensors_model(str(tmp_path / "parent"), tensors, config, tokens)
    copy, _ = quantizers.quantized_copy(tensors, lambda w: quantizers.gptq(w, 4, 32))
    factory.write_safetensors_model(str(tmp_path / "gptq"), copy, {**config, "quantization_config": gptq_config(4, 32)}, tokens)
    done = run_cli("--model_paths", str(tmp_path / "parent"), str(tmp_path / "gptq"), "--device", "cpu", "--quiet",
                   "--output", str(tmp_path / "report.json"))
    assert done.returncode == 0, done.stderr
    assert "GPTQ 4-bit g32" in done.stdout and "DERIVED" in done.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["model_b"]["quantization"] == "GPTQ 4-bit g32"
    assert report["scores"]["final"] > 0.98


# ----------------------------------------------------------------------------- bad input
def quantized_folder(tmp_path, parent, quantizer, quantization, change=None):
    write_quantized(tmp_path / "q", parent, quantizer, quantization)
    if change:
        path = str(tmp_path / "q" / "model.safetensors")
        from safetensors.torch import load_file, save_file
        tensors = load_file(path)
        change(tensors)
        save_file(tensors, path)
    return str(tmp_path / "q")


def one_line_error(path, reading=lambda m: m.query_key(0)):
    with pytest.raises(CheckpointError) as err:
        reading(ModelCheckpoint(path))
    message = str(err.value)
    assert "\n" not in message and path in message
    return message


def test_scales_for_another_group_size_are_refused(tmp_path, parent):
    path = quantized_folder(tmp_path, parent, lambda w: quantizers.gptq(w, 4, 32), gptq_config(4, 64))
    assert re.search(r"_proj.scales' has shape \(4, (\d+)\), but GPTQ 4-bit g64 of a \(\1, 128\) weight needs \(2, \1\)", one_line_error(path))


def test_packed_weight_that_disagrees_with_the_bits_is_refused(tmp_path, parent):
    path = quantized_folder(tmp_path, parent, lambda w: quantizers.mlx(w, 4, 64), {"mlx": {"group_size": 64, "bits": 3}})
    assert "q_proj.weight' packs" in one_line_error(path) or "not whole 3-bit" in one_line_error(path)


def test_missing_zeros_are_refused(tmp_path, parent):
    path = quantized_folder(tmp_path, parent, lambda w: quantizers.gptq(w, 4, 32), gptq_config(4, 32),
                            change=lambda t: t.pop("model.layers.0.self_attn.k_proj.qzeros"))
    assert "lacks tensor 'model.layers.0.self_attn.k_proj.qzeros'" in one_line_error(path)


def test_g_idx_out_of_range_is_refused(tmp_path, parent):
    def corrupt(tensors):
        tensors["model.layers.0.self_attn.q_proj.g_idx"][5] = 9
    path = quantized_folder(tmp_path, parent, lambda w: quantizers.gptq(w, 4, 32, act_order=True), gptq_config(4, 32, True), change=corrupt)
    assert "q_proj.g_idx' names group 9, outside the 4 groups" in one_line_error(path)


def test_fp8_scales_of_the_wrong_grid_are_refused(tmp_path, parent):
    path = quantized_folder(tmp_path, parent, lambda w: quantizers.fp8_block(w, 32), {"quant_method": "fp8", "weight_block_size": [64, 64]})
    assert re.search(r"weight_scale_inv' has shape \([24], 4\), but a \((64|128), 128\) weight needs \([12], 2\) for blocks of 64x64", one_line_error(path))


def test_bnb_quant_state_that_is_not_json_is_refused(tmp_path, parent):
    def corrupt(tensors):
        name = "model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4"
        tensors[name] = torch.full_like(tensors[name], 0xFF)
    path = quantized_folder(tmp_path, parent, lambda w: quantizers.bnb_4bit(w, "nf4", True),
                            {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, change=corrupt)
    assert "is not the JSON quant state bitsandbytes writes" in one_line_error(path)


@pytest.mark.parametrize("quantization, named", [({"quant_method": "exl2", "bits": 4}, "'exl2'"), ({"quant_method": "hqq"}, "'hqq'"),
                                                  ({"quant_method": "awq", "version": "marlin"}, "AWQ version 'marlin'"),
                                                  ({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}, "'marlin'")])
def test_other_quantization_methods_are_refused_by_name(tmp_path, parent, quantization, named):
    path = factory.write_safetensors_model(str(tmp_path / "q"), parent, {**factory.llama_config(HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB),
                                                                         "quantization_config": quantization}, factory.byte_level_tokens(VOCAB))
    with pytest.raises(CheckpointError, match=named) as err:
        ModelCheckpoint(path)
    assert "config.json" in str(err.value) and "\n" not in str(err.value)


def test_quantize_config_json_of_autogptq_is_read(tmp_path, parent):
    write_quantized(tmp_path / "q", parent, lambda w: quantizers.gptq(w, 4, 32), gptq_config(4, 32))
    config_path = tmp_path / "q" / "config.json"
    config = json.loads(config_path.read_text())
    settings = config.pop("quantization_config")
    config_path.write_text(json.dumps(config))
    (tmp_path / "q" / "quantize_config.json").write_text(json.dumps({k: v for k, v in settings.items() if k != "quant_method"}))
    assert ModelCheckpoint(str(tmp_path / "q")).describe()["quantization"] == "GPTQ 4-bit g32"


def test_cli_exits_2_on_a_malformed_quantized_checkpoint(tmp_path, parent):
    path = quantized_folder(tmp_path, parent, lambda w: quantizers.gptq(w, 4, 32), gptq_config(4, 64))
    factory.write_safetensors_model(str(tmp_path / "parent"), parent, factory.llama_config(HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB),
                                    factory.byte_level_tokens(VOCAB))
    done = run_cli("--model_paths", str(tmp_path / "parent"), path, "--device", "cpu", "--quiet")
    assert done.returncode == 2 and "scales' has shape" in done.stderr and os.path.basename(path) in done.stderr


def test_quantized_repo_from_the_hub_fetches_only_the_packed_parts(fake_hub, tmp_path):
    """Remote reads score as local ones, and fetch only the parts of the tensors the score reads:
    4-bit attention weights cost about a quarter of their float16 bytes."""
    from test_hub import comparable

    import awm
    from awm.readers import hub, range_cache

    tensors = factory.random_llama_tensors(HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, seed=4, dtype=torch.float16)
    config = factory.llama_config(HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB)
    factory.write_safetensors_model(str(tmp_path / "parent"), tensors, config, factory.byte_level_tokens(VOCAB))
    write_quantized(tmp_path / "gptq", {n: t.float() for n, t in tensors.items()}, lambda w: quantizers.gptq(w, 4, 128), gptq_config(4, 128))
    for name in ("parent", "gptq"):
        fake_hub.add(f"org/{name}", str(tmp_path / name))
    remote = awm.compare("org/parent", "org/gptq", device="cpu")
    assert comparable(remote) == comparable(awm.compare(tmp_path / "parent", tmp_path / "gptq", device="cpu"))
    assert remote.model_b["quantization"] == "GPTQ 4-bit g128"

    def attention_bytes(folder):
        model = ModelCheckpoint(str(folder))
        parts = [p for n in model.tensors_for_score() if "_proj" in n for p in model.stored_parts(n)]
        return sum(p.end - p.begin for p in parts), [p for n in model.tensors_for_score() for p in model.stored_parts(n)]

    packed, parts = attention_bytes(tmp_path / "gptq")
    assert packed < 0.3 * attention_bytes(tmp_path / "parent")[0]
    slack = hub.HEADER_PREFIX_BYTES[".safetensors"] + len(parts) * range_cache.MERGE_GAP
    assert fake_hub.weight_bytes_sent("org/gptq") <= sum(p.end - p.begin for p in parts) + slack
