"""Exactly function-preserving reparametrizations of a Llama-style model (Hugging Face names).

A suspect can apply these to hide where a model came from: the logits do not change, the
stored weights do. The demo and the tests use them to show which scores survive which move.
Every function takes a state dict (name -> float32 tensor) and the head geometry, and returns
a new state dict; none mutates its input.
"""
import torch

LAYER = "model.layers.{i}."
READS_RESIDUAL = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj")
WRITES_RESIDUAL = ("self_attn.o_proj", "mlp.down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")


def _layer_names(state, layers, suffixes, kind="weight"):
    return [LAYER.format(i=i) + f"{s}.{kind}" for i in range(layers) for s in suffixes if LAYER.format(i=i) + f"{s}.{kind}" in state]


def untie_output(state):
    """Tied output embeddings would couple the input and output sides: store lm_head explicitly."""
    state = dict(state)
    state.setdefault("lm_head.weight", state["model.embed_tokens.weight"].clone())
    return state


def permute_hidden(state, layers, generator, scale=3.0):
    """Permute, sign-flip and globally rescale the residual stream.

    RMSNorm removes the scale exactly only when its eps is rescaled too: use scaled_config.
    """
    state = untie_output(state)
    hidden = state["model.embed_tokens.weight"].shape[1]
    perm = torch.randperm(hidden, generator=generator)
    sign = torch.where(torch.rand(hidden, generator=generator) < 0.5, -1.0, 1.0)
    out = dict(state)
    out["model.embed_tokens.weight"] = state["model.embed_tokens.weight"][:, perm] * sign * scale
    for name in _layer_names(state, layers, READS_RESIDUAL) + ["lm_head.weight"]:
        out[name] = state[name][:, perm] * sign
    for name in _layer_names(state, layers, WRITES_RESIDUAL):
        out[name] = state[name][perm] * sign[:, None] * scale
    for name in _layer_names(state, layers, NORMS) + ["model.norm.weight"]:
        out[name] = state[name][perm]
    return out


def scaled_config(config, scale=3.0):
    """The config of a permute_hidden copy: rms(c x) with eps c^2 equals c rms(x) with eps."""
    return {**config, "rms_norm_eps": config["rms_norm_eps"] * scale ** 2, "tie_word_embeddings": False}


def fold_norm_gains(state, layers):
    """Multiply every RMSNorm gain into the projections that read its output; gains become 1."""
    state = untie_output(state)
    out = dict(state)
    readers = {"input_layernorm": READS_RESIDUAL[:3], "post_attention_layernorm": READS_RESIDUAL[3:]}
    for i in range(layers):
        for norm, projections in readers.items():
            gain_name = LAYER.format(i=i) + f"{norm}.weight"
            if gain_name not in state:              # a partial state (only the tensors the score reads)
                continue
            gain = state[gain_name]
            for projection in projections:
                name = LAYER.format(i=i) + f"{projection}.weight"
                if name in state:
                    out[name] = state[name] * gain[None, :]
            out[gain_name] = torch.ones_like(gain)
    if "model.norm.weight" in state:
        out["lm_head.weight"] = state["lm_head.weight"] * state["model.norm.weight"][None, :]
        out["model.norm.weight"] = torch.ones_like(state["model.norm.weight"])
    return out


def _pair_transform(state, layers, heads, make_matrix):
    """Apply a 2x2 map T to each rotary pair (j, j + hd/2) of every query head and T^-T to the
    same pair of the key head it shares; q.k at every relative position is unchanged when T
    commutes with 2-D rotations (T = r * rotation)."""
    n_head, n_kv, hd = heads.n_head, heads.n_kv, heads.head_dim
    half, group = hd // 2, n_head // n_kv
    out = dict(state)
    for i in range(layers):
        q_name, k_name = (LAYER.format(i=i) + f"self_attn.{p}.weight" for p in ("q_proj", "k_proj"))
        q = state[q_name].reshape(n_kv, group, 2, half, -1).clone()
        k = state[k_name].reshape(n_kv, 2, half, -1).clone()
        matrices = make_matrix(n_kv, half)                       # (n_kv, half, 2, 2)
        inverse_t = torch.linalg.inv(matrices).transpose(-1, -2)
        q = torch.einsum("gpab,gnbpd->gnapd", matrices, q)
        k = torch.einsum("gpab,gbpd->gapd", inverse_t, k)
        out[q_name] = q.reshape(n_head * hd, -1)
        out[k_name] = k.reshape(n_kv * hd, -1)
    return out


def _rotation(angle):
    cos, sin = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def rotate_rope_pairs(state, layers, heads, generator):
    """A random rotation inside every rotary pair (orthogonal on W_q/W_k output rows)."""
    return _pair_transform(state, layers, heads,
                           lambda g, p: _rotation(2 * torch.pi * torch.rand(g, p, generator=generator)))


def scale_rope_pairs(state, layers, heads, generator, spread=1.0):
    """Scale rotary pair j of the queries by s_j and of the keys by 1/s_j, s = exp(spread * N(0,1))."""
    def scaled(g, p):
        size = torch.exp(spread * torch.randn(g, p, generator=generator))
        return size[..., None, None] * torch.eye(2)
    return _pair_transform(state, layers, heads, scaled)


def random_rotation(hidden, generator, block=None):
    """A random orthogonal matrix (Haar), dense or block-diagonal with blocks of `block` dims."""
    size = block or hidden
    blocks = []
    for start in range(0, hidden, size):
        width = min(size, hidden - start)
        q, r = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=torch.float64))
        blocks.append(q * torch.sign(r.diagonal())[None, :])
    return torch.block_diag(*blocks).float()


def rotate_residual(state, layers, rotation):
    """Rotate the residual stream by an orthogonal matrix Q, as rotation-based quantization and
    SliceGPT do: norm gains are folded first (RMSNorm with unit gain commutes with Q), then the
    embedding and every weight that reads the residual get W Q, every weight that writes it
    gets Q^T W. A rectangular Q (hidden x k, orthonormal columns) also slices the stream."""
    state = fold_norm_gains(state, layers)
    out = dict(state)
    out["model.embed_tokens.weight"] = state["model.embed_tokens.weight"] @ rotation
    for name in _layer_names(state, layers, READS_RESIDUAL) + ["lm_head.weight"]:
        out[name] = state[name] @ rotation
    for name in _layer_names(state, layers, WRITES_RESIDUAL):
        out[name] = rotation.t() @ state[name]
    for name in _layer_names(state, layers, NORMS) + [n for n in ("model.norm.weight",) if n in state]:
        out[name] = torch.ones(rotation.shape[1])
    return out
