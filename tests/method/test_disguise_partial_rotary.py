"""Disguises of a partial-rotary family (GPT-NeoX, 25 % rotary dims, LayerNorm with biases).

Each disguise is exactly function-preserving (checked with transformers, fp32) and is combined
with the paper's own hidden-dimension disguise (permutation and rescaling; a sign flip is not
function-preserving under LayerNorm, whose mean subtraction it changes). The QK-circuit score
must stay >= 99 % while independent models stay below 2 %.
"""
import copy

import factory
import pytest
import torch
import transformers as tf

from awm.comparison import pair
from awm.comparison.digest import digest_path
from awm.witnesses import verdict

CPU = torch.device("cpu")
HEADS, HIDDEN, LAYERS, VOCAB = 4, 64, 2, 96
HEAD_DIM = HIDDEN // HEADS
ROTARY = 4                                   # rotary_pct 0.25 of a 16-dim head
PROMPT = torch.tensor([[5, 17, 3, 88, 42, 9, 60, 31]])


def new_model(seed):
    torch.manual_seed(seed)
    config = tf.GPTNeoXConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=LAYERS, intermediate_size=128,
                              vocab_size=VOCAB, rotary_pct=ROTARY / HEAD_DIM, max_position_embeddings=64)
    model = tf.GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():                     # trained-looking gains and biases, not the 1/0 of a fresh init
        for name, param in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name:
                param.copy_((1 + 0.3 * torch.randn_like(param)) if name.endswith("weight") else 0.1 * torch.randn_like(param))
            elif name.endswith("bias"):
                param.copy_(0.05 * torch.randn_like(param))
    return model


def qkv_view(state, i):
    """Layer i's fused weight (n_head, 3, hd, hidden) and bias (n_head, 3, hd), as copies."""
    prefix = f"gpt_neox.layers.{i}.attention.query_key_value."
    return (state[prefix + "weight"].reshape(HEADS, 3, HEAD_DIM, HIDDEN).clone(),
            state[prefix + "bias"].reshape(HEADS, 3, HEAD_DIM).clone())


def store_qkv(state, i, weight, bias):
    prefix = f"gpt_neox.layers.{i}.attention.query_key_value."
    state[prefix + "weight"] = weight.reshape(3 * HIDDEN, HIDDEN)
    state[prefix + "bias"] = bias.reshape(3 * HIDDEN)


def permute_and_scale(state, generator, scale=2.0):
    """Permute the residual dims everywhere and rescale the residual stream by `scale`."""
    perm = torch.randperm(HIDDEN, generator=generator)
    out = dict(state)
    for name, tensor in state.items():
        reads = name.endswith(("query_key_value.weight", "dense_h_to_4h.weight", "lm_head.weight"))
        writes = name.endswith(("attention.dense.weight", "dense_4h_to_h.weight"))
        if name == "gpt_neox.embed_in.weight":
            out[name] = tensor[:, perm] * scale
        elif reads:
            out[name] = tensor[:, perm]
        elif writes:
            out[name] = tensor[perm] * scale
        elif name.endswith(("attention.dense.bias", "dense_4h_to_h.bias")):
            out[name] = tensor[perm] * scale
        elif "layernorm" in name or "layer_norm" in name:
            out[name] = tensor[perm]
    return out


def fold_layernorm_gains(state):
    """W (g x_hat + b) = (W diag g)(x_hat + b / g): gains move into the readers, gains become 1."""
    out = dict(state)
    readers = {"input_layernorm": "attention.query_key_value", "post_attention_layernorm": "mlp.dense_h_to_4h"}
    for i in range(LAYERS):
        for norm, reader in readers.items():
            gain, bias = state[f"gpt_neox.layers.{i}.{norm}.weight"], state[f"gpt_neox.layers.{i}.{norm}.bias"]
            out[f"gpt_neox.layers.{i}.{reader}.weight"] = state[f"gpt_neox.layers.{i}.{reader}.weight"] * gain[None, :]
            out[f"gpt_neox.layers.{i}.{norm}.bias"] = bias / gain
            out[f"gpt_neox.layers.{i}.{norm}.weight"] = torch.ones_like(gain)
    return out


def transform_non_rotary(state, generator):
    """An invertible A on each head's non-rotary q dims and A^-T on the same k dims."""
    out = dict(state)
    rest = HEAD_DIM - ROTARY
    for i in range(LAYERS):
        weight, bias = qkv_view(out, i)
        for h in range(HEADS):
            left, _ = torch.linalg.qr(torch.randn(rest, rest, generator=generator))
            right, _ = torch.linalg.qr(torch.randn(rest, rest, generator=generator))
            a = left @ torch.diag(torch.exp(torch.randn(rest, generator=generator))) @ right
            a_inv_t = torch.linalg.inv(a).T
            weight[h, 0, ROTARY:], bias[h, 0, ROTARY:] = a @ weight[h, 0, ROTARY:], a @ bias[h, 0, ROTARY:]
            weight[h, 1, ROTARY:], bias[h, 1, ROTARY:] = a_inv_t @ weight[h, 1, ROTARY:], a_inv_t @ bias[h, 1, ROTARY:]
        store_qkv(out, i, weight, bias)
    return out


def scale_rotary_pairs(state, generator, spread=2.5):
    """Rotary pair (j, j + R/2) of q scaled by s_j, of k by 1/s_j, s = exp(spread N(0,1))."""
    out = dict(state)
    half = ROTARY // 2
    for i in range(LAYERS):
        weight, bias = qkv_view(out, i)
        for h in range(HEADS):
            s = torch.exp(spread * torch.randn(half, generator=generator)).repeat(2)
            weight[h, 0, :ROTARY] *= s[:, None]
            bias[h, 0, :ROTARY] *= s
            weight[h, 1, :ROTARY] /= s[:, None]
            bias[h, 1, :ROTARY] /= s
        store_qkv(out, i, weight, bias)
    return out


DISGUISES = {
    "fold LayerNorm gains": lambda s, g: fold_layernorm_gains(s),
    "invertible A on non-rotary dims": transform_non_rotary,
    "scale rotary pairs exp(2.5 N)": scale_rotary_pairs,
    "all three": lambda s, g: scale_rotary_pairs(transform_non_rotary(fold_layernorm_gains(s), g), g),
}


def save(model, state, directory, config_changes=None):
    config = copy.deepcopy(model.config)
    for key, value in (config_changes or {}).items():
        setattr(config, key, value)
    model = type(model)(config).eval()
    model.load_state_dict(state)
    model.save_pretrained(directory)
    factory.write_tokenizer_json(str(directory), factory.byte_level_tokens(VOCAB), specials=())
    return model


def scores(a, b):
    digests = [digest_path(p, CPU) for p in (a, b)]
    return pair.compare_digests(*digests, CPU, verdict.PAPER_NULL, progress=False)["scores"]


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp("neox")
    model = new_model(0)
    save(model, model.state_dict(), root / "original")
    with torch.no_grad():
        expected = model(PROMPT).logits
    return model, root, expected


@pytest.mark.parametrize("name", sorted(DISGUISES))
def test_partial_rotary_disguise_keeps_function_and_circuit_score(original, name):
    model, root, expected = original
    generator = torch.Generator().manual_seed(11)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    disguised = permute_and_scale(DISGUISES[name](state, generator), generator)
    eps = model.config.layer_norm_eps * 4.0                  # LayerNorm(c x) with eps c^2 = LayerNorm(x)
    copy = save(model, disguised, root / name.replace(" ", "_"), {"layer_norm_eps": eps})
    with torch.no_grad():
        assert torch.allclose(copy(PROMPT).logits, expected, atol=1e-3, rtol=1e-3)
    result = scores(root / "original", root / name.replace(" ", "_"))
    assert result["qk_circuit"] >= 99.0, result


def test_independent_partial_rotary_models_stay_near_zero(original, tmp_path):
    _, root, _ = original
    for seed in (1, 2, 3):
        other = new_model(seed)
        save(other, other.state_dict(), tmp_path / f"independent{seed}")
        result = scores(root / "original", tmp_path / f"independent{seed}")
        assert abs(result["qk_circuit"]) < 2.0 and abs(result["final"]) < 2.0, result
