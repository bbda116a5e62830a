"""Every row of the architecture table against a real layout.

Families that transformers implements are built as tiny random models and saved with
save_pretrained; the Q and K our reader returns must reproduce the attention logits the
model itself computes (captured at its softmax). Remote-code families are packed from
their documented layouts.
"""
import json
import math
import os

import pytest
import torch
import transformers as tf
from safetensors.torch import save_file

from awm.readers.model_reader import ModelCheckpoint

SMALL = dict(vocab_size=96, max_position_embeddings=64)


def llama_text(**extra):
    return tf.LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                          num_hidden_layers=2, **SMALL, **extra)


def tiny_clip():
    return tf.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_attention_heads=2, num_hidden_layers=1,
                               image_size=32, patch_size=16)


MODELS = {
    "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, pad_token_id=0, **SMALL)),
    "gpt_neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_hidden_layers=2, **SMALL)),
    "bloom": lambda: tf.BloomForCausalLM(tf.BloomConfig(hidden_size=64, n_head=4, n_layer=2, vocab_size=96)),
    "falcon_grouped": lambda: tf.FalconForCausalLM(tf.FalconConfig(hidden_size=64, num_attention_heads=8, num_kv_heads=2, new_decoder_architecture=True, num_hidden_layers=2, vocab_size=96)),
    "falcon_multi_query": lambda: tf.FalconForCausalLM(tf.FalconConfig(hidden_size=64, num_attention_heads=4, multi_query=True, new_decoder_architecture=False, num_hidden_layers=2, vocab_size=96)),
    "falcon_interleaved": lambda: tf.FalconForCausalLM(tf.FalconConfig(hidden_size=64, num_attention_heads=4, multi_query=False, new_decoder_architecture=False, num_hidden_layers=2, vocab_size=96)),
    "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_head=4, n_layer=2, vocab_size=96, n_positions=64)),
    "mpt": lambda: tf.MptForCausalLM(tf.MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=96, expansion_ratio=2)),
    "qwen2_moe": lambda: tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, **SMALL)),
    "mixtral": lambda: tf.MixtralForCausalLM(tf.MixtralConfig(hidden_size=64, intermediate_size=96, num_local_experts=4, num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, **SMALL)),
    "olmo": lambda: tf.OlmoForCausalLM(tf.OlmoConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_hidden_layers=2, **SMALL)),
    "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=2, **SMALL)),
    "llava": lambda: tf.LlavaForConditionalGeneration(tf.LlavaConfig(text_config=llama_text(), vision_config=tiny_clip(), image_token_index=95)),
    "opt": lambda: tf.OPTForCausalLM(tf.OPTConfig(hidden_size=64, ffn_dim=96, num_attention_heads=4, num_hidden_layers=2, word_embed_proj_dim=64, **SMALL)),
    "gptj": lambda: tf.GPTJForCausalLM(tf.GPTJConfig(n_embd=64, n_head=4, n_layer=2, rotary_dim=8, vocab_size=96, n_positions=64)),
    "gpt_neo": lambda: tf.GPTNeoForCausalLM(tf.GPTNeoConfig(hidden_size=64, num_heads=4, num_layers=2, attention_types=[[["global", "local"], 1]], vocab_size=96, max_position_embeddings=64)),
    "codegen": lambda: tf.CodeGenForCausalLM(tf.CodeGenConfig(n_embd=64, n_head=8, n_layer=2, rotary_dim=4, vocab_size=96, n_positions=64)),
    "gpt_bigcode": lambda: tf.GPTBigCodeForCausalLM(tf.GPTBigCodeConfig(n_embd=64, n_head=4, n_layer=2, vocab_size=96, n_positions=64, multi_query=True)),
    "glm4": lambda: tf.Glm4ForCausalLM(tf.Glm4Config(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=2, pad_token_id=0, **SMALL)),
    "glm4_moe": lambda: tf.Glm4MoeForCausalLM(tf.Glm4MoeConfig(hidden_size=64, intermediate_size=96, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=2, pad_token_id=0, **SMALL)),
    "hunyuan_v1_dense": lambda: tf.HunYuanDenseV1ForCausalLM(tf.HunYuanDenseV1Config(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=2, pad_token_id=0, **SMALL)),
    "qwen2_vl": lambda: tf.Qwen2VLForConditionalGeneration(tf.Qwen2VLConfig(
        text_config=dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, **SMALL),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, in_chans=3, spatial_merge_size=2, patch_size=14))),
}


QK_NORMED = {"gemma3", "hunyuan_v1_dense"}
LOGIT_SCALE = {"gpt_neo": 1.0}       # GPT-Neo does not scale its logits by 1/sqrt(head_dim)


def attention_modules(model):
    """The first decoder layer's attention and the linear layer(s) feeding Q."""
    for name, module in model.named_modules():
        for attr in ("q_proj", "qkv_proj", "query_key_value", "c_attn", "Wqkv"):
            if hasattr(module, attr) and "vision" not in name and "visual" not in name:
                return module, getattr(module, attr)
    raise AssertionError("no attention module found")


def captured_logits(model, hidden, heads):
    """Run layer 0's attention on length-1 sequences (RoPE and ALiBi are then the identity)
    and capture the pre-softmax logits and the exact input of the Q projection."""
    attention, q_linear = attention_modules(model)
    seen = {}
    handle = q_linear.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].detach().clone()))
    original = torch.nn.functional.softmax

    def capture(scores, *args, **kwargs):
        seen.setdefault("logits", scores.detach().clone())
        return original(scores, *args, **kwargs)

    torch.nn.functional.softmax = capture
    try:
        with torch.no_grad():
            model(input_ids=torch.arange(8).reshape(8, 1) + 3)
    finally:
        torch.nn.functional.softmax = original
        handle.remove()
    return seen["x"].reshape(8, hidden), seen["logits"].reshape(8, heads)


def zero_biases(model):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()


@pytest.mark.parametrize("family", sorted(MODELS))
def test_reader_reproduces_the_models_own_attention_logits(family, tmp_path):
    torch.manual_seed(0)
    model = MODELS[family]().eval()
    model.config._attn_implementation = "eager"
    for sub in ("text_config",):
        if hasattr(model.config, sub):
            getattr(model.config, sub)._attn_implementation = "eager"
    zero_biases(model)
    model.save_pretrained(tmp_path)
    checkpoint = ModelCheckpoint(tmp_path)
    w_q, w_k = checkpoint.query_key(0)
    heads = checkpoint.heads
    assert w_q.shape == (heads.n_head * heads.head_dim, checkpoint.hidden_size)
    assert w_k.shape == (heads.n_kv * heads.head_dim, checkpoint.hidden_size)
    if family in QK_NORMED:   # q/k RMSNorm sits between projection and logits: compare the tensors
        attention, _ = attention_modules(model)
        assert torch.equal(w_q, attention.q_proj.weight) and torch.equal(w_k, attention.k_proj.weight)
        return
    x, logits = captured_logits(model, checkpoint.hidden_size, heads.n_head)
    q = (x @ w_q.T).reshape(8, heads.n_head, heads.head_dim)
    k = (x @ w_k.T).reshape(8, heads.n_kv, heads.head_dim)
    k = k.repeat_interleave(heads.n_head // heads.n_kv, dim=1)
    ours = (q * k).sum(-1) * LOGIT_SCALE.get(family, 1 / math.sqrt(heads.head_dim))
    assert torch.allclose(ours, logits, atol=1e-4, rtol=1e-4), (ours[:2], logits[:2])


# ----------------------------------------------------------------------------- remote-code families
def _heads(n_head, n_kv, hd, hidden, seed):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n_head, hd, hidden, generator=generator), torch.randn(n_kv, hd, hidden, generator=generator),
            torch.randn(n_kv, hd, hidden, generator=generator))


def pack_rows(q, k, v):
    return torch.cat([q.reshape(-1, q.shape[-1]), k.reshape(-1, k.shape[-1]), v.reshape(-1, v.shape[-1])])


def pack_head_interleaved(q, k, v):
    return torch.stack([q, k, v], dim=1).reshape(-1, q.shape[-1])


def pack_kv_grouped(q, k, v):
    n_kv = k.shape[0]
    grouped = q.reshape(n_kv, -1, *q.shape[1:])
    return torch.cat([grouped, k[:, None], v[:, None]], dim=1).reshape(-1, q.shape[-1])


# name: (config, embedding name, fused tensor template, packer, n_head, n_kv)
REMOTE = {
    "qwen": ({"model_type": "qwen", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "kv_channels": 16},
             "transformer.wte.weight", "transformer.h.{i}.attn.c_attn.weight", pack_rows, 4, 4),
    "baichuan": ({"model_type": "baichuan", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2},
                 "model.embed_tokens.weight", "model.layers.{i}.self_attn.W_pack.weight", pack_rows, 4, 4),
    "chatglm2": ({"model_type": "chatglm", "hidden_size": 64, "num_attention_heads": 4, "num_layers": 2, "kv_channels": 16,
                  "multi_query_attention": True, "multi_query_group_num": 2},
                 "transformer.embedding.word_embeddings.weight",
                 "transformer.encoder.layers.{i}.self_attention.query_key_value.weight", pack_rows, 4, 2),
    "chatglm-6b": ({"model_type": "chatglm", "hidden_size": 64, "num_attention_heads": 4, "num_layers": 2},
                   "transformer.word_embeddings.weight", "transformer.layers.{i}.attention.query_key_value.weight",
                   pack_head_interleaved, 4, 4),
    "internlm2": ({"model_type": "internlm2", "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 2},
                  "model.tok_embeddings.weight", "model.layers.{i}.attention.wqkv.weight", pack_kv_grouped, 8, 2),
    "olmo-1": ({"model_type": "hf_olmo", "d_model": 64, "n_heads": 4, "n_layers": 2},
               "model.transformer.wte.weight", "model.transformer.blocks.{i}.att_proj.weight", pack_rows, 4, 4),
    "mpt-gqa": ({"model_type": "mpt", "d_model": 64, "n_heads": 4, "n_layers": 2, "attn_config": {"kv_n_heads": 1}},
                "transformer.wte.weight", "transformer.blocks.{i}.attn.Wqkv.weight", pack_rows, 4, 1),
}


@pytest.mark.parametrize("family", sorted(REMOTE))
def test_remote_code_layouts_split_into_true_heads(family, tmp_path):
    config, embedding, template, pack, n_head, n_kv = REMOTE[family]
    hd = 64 // n_head
    tensors = {embedding: torch.randn(50, 64)}
    expected = {}
    for layer in range(2):
        q, k, v = _heads(n_head, n_kv, hd, 64, seed=layer)
        tensors[template.format(i=layer)] = pack(q, k, v)
        expected[layer] = (q.reshape(-1, 64), k.reshape(-1, 64))
    save_file(tensors, os.path.join(tmp_path, "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    checkpoint = ModelCheckpoint(tmp_path)
    for layer in range(2):
        w_q, w_k = checkpoint.query_key(layer)
        assert torch.equal(w_q, expected[layer][0]) and torch.equal(w_k, expected[layer][1])


def test_unknown_family_names_the_architecture_and_its_attention_tensors(tmp_path):
    save_file({"backbone.embed.weight": torch.zeros(4, 8), "backbone.blocks.0.mixer.in_proj.weight": torch.zeros(8, 8),
               "backbone.blocks.0.attn.qkv.weight": torch.zeros(24, 8)}, os.path.join(tmp_path, "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba_x", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}))
    from awm.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"'mamba_x' is not in the architecture table.*backbone.blocks.0.attn.qkv.weight"):
        ModelCheckpoint(tmp_path)


def test_mla_is_reported_as_unsupported_with_the_reason(tmp_path):
    save_file({"model.embed_tokens.weight": torch.zeros(4, 8), "model.layers.0.self_attn.kv_a_proj_with_mqa.weight": torch.zeros(8, 8)},
              os.path.join(tmp_path, "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_v3", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1}))
    from awm.errors import CheckpointError

    with pytest.raises(CheckpointError, match="latent attention"):
        ModelCheckpoint(tmp_path)
