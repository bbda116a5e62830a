"""Builders of small but real checkpoints for the tests (and the benchmark).

They write what a user's disk would hold: config.json, tokenizer.json and safetensors
(single-file or sharded with an index), with Llama-style tensor names.
"""
import json
import os

import torch
from safetensors.torch import save_file


def byte_level_tokens(count, seed=0):
    """Distinct token strings, spelled like a byte-level BPE vocabulary."""
    generator = torch.Generator().manual_seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyzĠ"
    tokens, seen = [], set()
    while len(tokens) < count:
        length = int(torch.randint(1, 7, (1,), generator=generator))
        token = "".join(letters[int(i)] for i in torch.randint(0, len(letters), (length,), generator=generator))
        if token not in seen:
            seen.add(token)
            tokens.append(token)
    return tokens


def anchored_tokens(count, seed=0):
    """A byte-level vocabulary of `count` tokens that holds the first pass's anchor strings (as
    real tokenizers do), then random tokens."""
    from awm.library.fingerprint import ANCHORS
    from awm.readers.vocabulary import BYTE_OF_CHAR

    char_of_byte = {byte: char for char, byte in BYTE_OF_CHAR.items()}
    tokens = list(dict.fromkeys("".join(char_of_byte[b] for b in anchor) for anchor in ANCHORS))
    extra = [t for t in byte_level_tokens(count + len(tokens), seed) if t not in set(tokens)]
    return (tokens + extra)[:count]


def write_tokenizer_json(directory, tokens, specials=("<|endoftext|>",)):
    vocab = {token: i for i, token in enumerate(tokens)}
    added = [{"id": len(tokens) + i, "content": s, "special": True} for i, s in enumerate(specials)]
    data = {"version": "1.0", "model": {"type": "BPE", "vocab": vocab, "merges": []},
            "pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"}, "added_tokens": added}
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as out:
        json.dump(data, out)


def llama_config(hidden, layers, heads, kv_heads, vocab, **extra):
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "vocab_size": vocab, "intermediate_size": 2 * hidden, "torch_dtype": "float32", **extra}


def random_llama_tensors(hidden=64, layers=4, heads=4, kv_heads=2, vocab=300, seed=0, dtype=torch.float32):
    """Embedding and attention tensors of a Llama-style model with independent random weights."""
    generator = torch.Generator().manual_seed(seed)
    head_dim = hidden // heads
    rand = lambda *shape: torch.randn(*shape, generator=generator).to(dtype)
    tensors = {"model.embed_tokens.weight": rand(vocab, hidden)}
    for i in range(layers):
        prefix = f"model.layers.{i}."
        tensors[prefix + "self_attn.q_proj.weight"] = rand(heads * head_dim, hidden)
        tensors[prefix + "self_attn.k_proj.weight"] = rand(kv_heads * head_dim, hidden)
        tensors[prefix + "input_layernorm.weight"] = (1 + 0.1 * rand(hidden)).to(dtype)
    return tensors


def write_safetensors_model(directory, tensors, config, tokens, shards=1):
    """Write a model directory; shards > 1 splits tensors across files with an index."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as out:
        json.dump(config, out)
    write_tokenizer_json(directory, tokens)
    names = list(tensors)
    if shards == 1:
        save_file({n: tensors[n].contiguous() for n in names}, os.path.join(directory, "model.safetensors"))
        return directory
    weight_map = {}
    for s in range(shards):
        shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s::shards]
        save_file({n: tensors[n].contiguous() for n in part}, os.path.join(directory, shard))
        weight_map.update({n: shard for n in part})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as out:
        json.dump({"metadata": {}, "weight_map": weight_map}, out)
    return directory


def make_llama(directory, hidden=64, layers=4, heads=4, kv_heads=2, vocab=300, seed=0, shards=1, token_seed=0):
    tensors = random_llama_tensors(hidden, layers, heads, kv_heads, vocab, seed)
    write_safetensors_model(directory, tensors, llama_config(hidden, layers, heads, kv_heads, vocab),
                            byte_level_tokens(vocab, token_seed), shards)
    return tensors


def structured_llama_tensors(hidden=96, layers=4, heads=4, kv_heads=2, vocab=900, seed=0):
    """Random weights with what trained ones have and random ones lack: input dims of W_q / W_k
    that differ in scale (layer spectra of their own), and an anisotropic embedding."""
    tensors = random_llama_tensors(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab=vocab, seed=seed)
    generator = torch.Generator().manual_seed(100 + seed)
    for name in list(tensors):
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            tensors[name] = tensors[name] * torch.exp(0.7 * torch.randn(hidden, generator=generator))
    tensors["model.embed_tokens.weight"] += 3.0 * torch.randn(vocab, 1, generator=generator) * torch.randn(1, hidden, generator=generator)
    return tensors


def anisotropic_llama_tensors(hidden=128, layers=4, heads=4, kv_heads=2, vocab=3000, seed=0, strength=3.0):
    """Independent weights with the anisotropy of trained small models: every embedding column
    carries one token-space profile shared by all models (think token frequency), with its own
    coefficient, and every W_q / W_k reads that coefficient direction strongly. Two such models
    have no dimension correspondence, yet their LAP-aligned CKA is far above zero."""
    profile = torch.randn(vocab, generator=torch.Generator().manual_seed(12345))
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator)
    coefficients = rand(hidden)
    tensors = {"model.embed_tokens.weight": strength * torch.outer(profile, coefficients) + rand(vocab, hidden)}
    head_dim = hidden // heads
    for i in range(layers):
        prefix = f"model.layers.{i}."
        for name, rows in (("q_proj", heads * head_dim), ("k_proj", kv_heads * head_dim)):
            tensors[prefix + f"self_attn.{name}.weight"] = strength * torch.outer(rand(rows), coefficients) / hidden ** 0.5 + rand(rows, hidden) / hidden ** 0.5
        tensors[prefix + "input_layernorm.weight"] = 1 + 0.1 * rand(hidden)
    return tensors


def make_llama_and_disguised_copy(base_dir, copy_dir, vocab=300):
    """A small Llama and its permuted, sign-flipped, rescaled copy: a derived pair by construction."""
    tensors = make_llama(base_dir, vocab=vocab)
    write_safetensors_model(copy_dir, permute_sign_scale(tensors), llama_config(64, 4, 4, 2, vocab), byte_level_tokens(vocab))
    return tensors


# ----------------------------------------------------------------------------- disguises
def permute_sign_scale(tensors, seed=1, scale=3.0):
    """Permute, sign-flip and rescale the hidden dims consistently in embedding and W_q/W_k."""
    generator = torch.Generator().manual_seed(seed)
    hidden = tensors["model.embed_tokens.weight"].shape[1]
    perm = torch.randperm(hidden, generator=generator)
    sign = torch.where(torch.rand(hidden, generator=generator) < 0.5, -1.0, 1.0)
    out = {}
    for name, tensor in tensors.items():
        if name.endswith("embed_tokens.weight"):
            out[name] = tensor[:, perm] * sign * scale
        elif name.endswith(("q_proj.weight", "k_proj.weight")):
            out[name] = tensor[:, perm] * sign / scale
        elif name.endswith("layernorm.weight"):
            out[name] = tensor[perm]
        else:
            out[name] = tensor
    return out


def rotate_outputs(tensors, seed=2):
    """An orthogonal transform on the output rows of every W_q and W_k."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(tensors)
    for name, tensor in tensors.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            rows = tensor.shape[0]
            orthogonal, _ = torch.linalg.qr(torch.randn(rows, rows, generator=generator))
            out[name] = orthogonal @ tensor
    return out


def prune(tensors, keep_dims, keep_layers):
    """Keep a subset of hidden dims (in every tensor) and of layers (renumbered)."""
    out = {"model.embed_tokens.weight": tensors["model.embed_tokens.weight"][:, keep_dims]}
    for new, old in enumerate(keep_layers):
        for suffix in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "input_layernorm.weight"):
            tensor = tensors[f"model.layers.{old}.{suffix}"]
            out[f"model.layers.{new}.{suffix}"] = tensor[keep_dims] if tensor.dim() == 1 else tensor[:, keep_dims]
    return out


# ----------------------------------------------------------------------------- GGUF
def _rope_interleave(weight, n_heads):
    """What llama.cpp's converter does to Llama Q/K rows: each head's halves become pairs."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


GGUF_LAYER_TENSORS = {"self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
                      "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                      "mlp.down_proj.weight": "ffn_down.weight", "post_attention_layernorm.weight": "ffn_norm.weight"}


def write_gguf(path, tensors, heads, kv_heads, tokens, attn_type="Q8_0", embed_type="Q8_0", fused=False,
               split_max_tensors=0):
    """Write a llama-architecture GGUF of a factory model, quantized as llama.cpp would."""
    import gguf


    hidden = tensors["model.embed_tokens.weight"].shape[1]
    layers = sum(1 for n in tensors if n.endswith("q_proj.weight"))
    writer = gguf.GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    writer.add_block_count(layers)
    writer.add_embedding_length(hidden)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))

    def add(name, tensor, qtype):
        array = tensor.to(torch.float32).numpy()
        kind = getattr(gguf.GGMLQuantizationType, qtype)
        if qtype == "F32":
            writer.add_tensor(name, array)
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, kind), raw_dtype=kind)

    add("token_embd.weight", tensors["model.embed_tokens.weight"], embed_type)
    for i in range(layers):
        q = _rope_interleave(tensors[f"model.layers.{i}.self_attn.q_proj.weight"], heads)
        k = _rope_interleave(tensors[f"model.layers.{i}.self_attn.k_proj.weight"], kv_heads)
        if fused:
            add(f"blk.{i}.attn_qkv.weight", torch.cat([q, k, k]), attn_type)
        else:
            add(f"blk.{i}.attn_q.weight", q, attn_type)
            add(f"blk.{i}.attn_k.weight", k, attn_type)
        add(f"blk.{i}.attn_norm.weight", tensors[f"model.layers.{i}.input_layernorm.weight"], "F32")
        for hf, ours in GGUF_LAYER_TENSORS.items():          # the rest of the layer, where the model has it
            if f"model.layers.{i}.{hf}" in tensors:
                add(f"blk.{i}.{ours}", tensors[f"model.layers.{i}.{hf}"], "F32" if ours.endswith("norm.weight") else attn_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
