#!/usr/bin/env python
"""What a Hub read of a quantized repo transfers, against its bf16 parent, at a real model's shape.

    python benchmarks/quantized_hub_bytes.py [--preset llama3-8b] [--json asset/quantized_hub_bytes.json]

Each repo is laid out as its format stores a whole model (every linear layer packed, the
embedding as the format leaves it) in sparse safetensors files of their true size: only the
small tensors whose values the reader parses (bitsandbytes' quant states, compressed-tensors'
shapes) hold data. The reader then plans its byte ranges exactly as for a Hub repo
(ModelCheckpoint.tensors_for_score and the stored parts behind each tensor, readers.hub), and the
bytes of those ranges plus the header are what a first Hub run fetches (tests/readers/test_quantized.py
checks against a Hub server that a run fetches no more).
"""
import argparse
import json
import os
import struct
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import factory  # noqa: E402

from awm.atomic import write_json_atomic  # noqa: E402
from awm.readers import range_cache  # noqa: E402
from awm.readers.checkpoint_files import SAFETENSORS_DTYPES  # noqa: E402
from awm.readers.model_reader import ModelCheckpoint  # noqa: E402

PRESETS = {  # hidden, layers, heads, kv heads, vocab, intermediate
    "llama3-8b": (4096, 32, 32, 8, 128256, 14336),
    "llama3.2-1b": (2048, 16, 32, 8, 128256, 8192),
}
GROUP = 128


def linear_parts(kind, out_features, in_features):
    """{suffix: (dtype, shape, bytes or None)} of one linear layer stored by `kind`."""
    groups = in_features // GROUP
    if kind == "bf16":
        return {"weight": ("BF16", (out_features, in_features), None)}
    if kind == "gptq":
        return {"qweight": ("I32", (in_features // 8, out_features), None), "qzeros": ("I32", (groups, out_features // 8), None),
                "scales": ("F16", (groups, out_features), None), "g_idx": ("I32", (in_features,), None)}
    if kind == "awq":
        return {"qweight": ("I32", (in_features, out_features // 8), None), "qzeros": ("I32", (groups, out_features // 8), None),
                "scales": ("F16", (groups, out_features), None)}
    if kind == "fp8":
        return {"weight": ("F8_E4M3", (out_features, in_features), None), "weight_scale_inv": ("F32", (-(-out_features // 128), groups), None)}
    if kind == "nf4":
        count = out_features * in_features
        state = json.dumps({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [out_features, in_features],
                            "nested_blocksize": 256, "nested_offset": 0.0}).encode()
        return {"weight": ("U8", (count // 2, 1), None), "weight.absmax": ("U8", (count // 64,), None),
                "weight.quant_map": ("F32", (16,), None), "weight.nested_absmax": ("F32", (-(-count // 64 // 256),), None),
                "weight.nested_quant_map": ("F32", (256,), None),
                "weight.quant_state.bitsandbytes__nf4": ("U8", (len(state),), state)}
    if kind == "mlx":
        return {"weight": ("U32", (out_features, in_features // 8), None), "scales": ("BF16", (out_features, in_features // 64), None),
                "biases": ("BF16", (out_features, in_features // 64), None)}
    raise ValueError(kind)


CONFIGS = {
    "bf16": None,
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "desc_act": False, "sym": True},
    "awq": {"quant_method": "awq", "bits": 4, "group_size": GROUP, "version": "gemm", "zero_point": True},
    "fp8": {"quant_method": "fp8", "weight_block_size": [128, 128]},
    "nf4": {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
    "mlx": "mlx",
}
LABELS = {"bf16": "bf16 (the parent)", "gptq": "GPTQ 4-bit g128", "awq": "AWQ 4-bit g128 GEMM", "fp8": "FP8 e4m3 block 128x128",
          "nf4": "bitsandbytes NF4 double-quant", "mlx": "MLX 4-bit g64 (embedding too)"}


def model_tensors(kind, preset):
    hidden, layers, heads, kv_heads, vocab, intermediate = preset
    head_dim = hidden // heads
    tensors = {}
    embedding = linear_parts("mlx", vocab, hidden) if kind == "mlx" else {"weight": ("BF16", (vocab, hidden), None)}
    tensors.update({f"model.embed_tokens.{k}": v for k, v in embedding.items()})
    shapes = {"self_attn.q_proj": (heads * head_dim, hidden), "self_attn.k_proj": (kv_heads * head_dim, hidden),
              "self_attn.v_proj": (kv_heads * head_dim, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (intermediate, hidden), "mlp.up_proj": (intermediate, hidden), "mlp.down_proj": (hidden, intermediate)}
    for i in range(layers):
        for module, shape in shapes.items():
            tensors.update({f"model.layers.{i}.{module}.{k}": v for k, v in linear_parts(kind, *shape).items()})
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{i}.{norm}.weight"] = ("BF16", (hidden,), None)
    tensors["model.norm.weight"] = ("BF16", (hidden,), None)
    tensors["lm_head.weight"] = ("BF16", (vocab, hidden), None)
    return tensors


def write_sparse(path, tensors):
    """A safetensors file of its true size in which only the given small tensors hold bytes."""
    header, offset = {}, 0
    for name, (dtype, shape, _) in tensors.items():
        size = SAFETENSORS_DTYPES[dtype]
        for d in shape:
            size *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)) + encoded)
        start = out.tell()
        for name, (_, _, data) in tensors.items():
            if data is not None:
                out.seek(start + header[name]["data_offsets"][0])
                out.write(data)
        out.truncate(start + offset)
    return 8 + len(encoded), start + offset


def measure(kind, preset, work):
    folder = os.path.join(work, kind)
    os.makedirs(folder)
    header_bytes, repo_bytes = write_sparse(os.path.join(folder, "model.safetensors"), model_tensors(kind, preset))
    hidden, layers, heads, kv_heads, vocab, intermediate = preset
    config = factory.llama_config(hidden, layers, heads, kv_heads, vocab, intermediate_size=intermediate)
    if CONFIGS[kind] == "mlx":
        config["quantization"] = {"group_size": 64, "bits": 4}
    elif CONFIGS[kind]:
        config["quantization_config"] = CONFIGS[kind]
    with open(os.path.join(folder, "config.json"), "w") as out:
        json.dump(config, out)
    factory.write_tokenizer_json(folder, factory.byte_level_tokens(1000))
    model = ModelCheckpoint(folder)
    ranges = [(part.begin, part.end) for name in model.tensors_for_score() for part in model.stored_parts(name)]
    needed = header_bytes + sum(stop - start for start, stop in range_cache.merge(ranges))
    attention = sum(p.end - p.begin for name in model.tensors_for_score() if "_proj" in name for p in model.stored_parts(name))
    return {"format": LABELS[kind], "repo_bytes": repo_bytes, "fetched_bytes": needed, "attention_bytes": attention,
            "label": model.describe()["dtype"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama3-8b", choices=sorted(PRESETS))
    parser.add_argument("--json", default=os.path.join(ROOT, "asset", "quantized_hub_bytes.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="awm-bytes-") as work:
        for kind in CONFIGS:
            row = measure(kind, PRESETS[args.preset], work)
            rows.append(row)
        parent = rows[0]
        for row in rows:
            row["of_parent_fetch"] = round(row["fetched_bytes"] / parent["fetched_bytes"], 3)
            row["attention_of_parent"] = round(row["attention_bytes"] / parent["attention_bytes"], 3)
            print(f"{row['format']:32s} repo {row['repo_bytes'] / 1e9:6.2f} GB  fetched {row['fetched_bytes'] / 1e9:5.2f} GB "
                  f"({100 * row['fetched_bytes'] / row['repo_bytes']:4.1f} % of the repo, {row['of_parent_fetch']:.2f} of the parent's)  "
                  f"W_q/W_k {row['attention_bytes'] / 1e9:5.2f} GB ({row['attention_of_parent']:.2f})", flush=True)
    write_json_atomic(args.json, {"preset": args.preset, "rows": rows})


if __name__ == "__main__":
    main()
