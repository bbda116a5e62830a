"""Model surgery on Llama-style state dicts (Hugging Face names): what pruning, MoE upcycling
and a mostly re-drawn attention do to a parent. The tests and the calibration zoo use them."""
import torch

from awm.method import disguise


def prune_hidden(state, keep):
    """Keep only the residual dims in `keep` in every tensor that reads or writes the residual."""
    pruned = {}
    for name, tensor in state.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight", "q_proj.weight", "k_proj.weight",
                          "v_proj.weight", "gate_proj.weight", "up_proj.weight")):
            tensor = tensor[:, keep]
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            tensor = tensor[keep, :]
        elif name.endswith("norm.weight"):
            tensor = tensor[keep]
        pruned[name] = tensor.contiguous()
    return pruned


def drop_layers(state, dropped):
    kept = [i for i in range(1 + max(int(k.split(".")[2]) for k in state if k.startswith("model.layers.")))
            if i not in dropped]
    renumber = {old: new for new, old in enumerate(kept)}
    out = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if parts[:2] == ["model", "layers"]:
            if int(parts[2]) in dropped:
                continue
            parts[2] = str(renumber[int(parts[2])])
        out[".".join(parts)] = tensor
    return out, len(kept)


def upcycle_to_moe(state, experts=4):
    """Mixtral-style MoE: every expert starts as a copy of the dense MLP (attention untouched)."""
    out = {}
    for name, tensor in state.items():
        for dense, expert in (("mlp.gate_proj", "w1"), ("mlp.down_proj", "w2"), ("mlp.up_proj", "w3")):
            if f".{dense}." in name:
                for e in range(experts):
                    out[name.replace(dense, f"block_sparse_moe.experts.{e}.{expert}")] = tensor.clone()
                break
        else:
            out[name] = tensor
    for layer in {int(k.split(".")[2]) for k in state if k.startswith("model.layers.")}:
        hidden = state["model.embed_tokens.weight"].shape[1]
        out[f"model.layers.{layer}.block_sparse_moe.gate.weight"] = 0.02 * torch.randn(experts, hidden)
    return out


def weak_positive(state, layers, keep=0.2, seed=0):
    """Embedding inherited, attention mostly re-drawn: W' = keep*W + noise of W's scale."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(state)
    for i in range(layers):
        for proj in ("q_proj", "k_proj"):
            name = f"model.layers.{i}.self_attn.{proj}.weight"
            w = state[name]
            noise = torch.randn(w.shape, generator=generator) * w.std()
            out[name] = keep * w + (1 - keep ** 2) ** 0.5 * noise
    return out


def redraw_embedding(state, generator, rows=None):
    """A fresh random embedding (the output head tied to it) at the original's scale; the
    transformer body untouched. `rows`: a vocabulary of another size (a tokenizer transplant)."""
    embedding = state["model.embed_tokens.weight"]
    out = {k: v for k, v in state.items() if k != "lm_head.weight"}
    out["model.embed_tokens.weight"] = torch.randn(rows or embedding.shape[0], embedding.shape[1], generator=generator) * embedding.std()
    return out


def extend_embedding(state, new_rows, generator):
    """New tokens appended: the old rows kept, the new ones drawn at the old rows' scale."""
    embedding = state["model.embed_tokens.weight"]
    out = {k: v for k, v in state.items() if k != "lm_head.weight"}
    fresh = torch.randn(new_rows, embedding.shape[1], generator=generator) * embedding.std()
    out["model.embed_tokens.weight"] = torch.cat([embedding, fresh])
    return out


def with_embedding(state, donor):
    """`state` with the donor's input embedding (and an output head tied to it)."""
    out = {k: v for k, v in state.items() if k != "lm_head.weight"}
    out["model.embed_tokens.weight"] = donor["model.embed_tokens.weight"].clone()
    return out


def rotate_residual(state, seed):
    """The residual stream rotated by a random orthogonal matrix (awm.method.disguise.rotate_residual:
    norm gains folded, E Q, W Q), for states holding only some of a model's tensors."""
    hidden = state["model.embed_tokens.weight"].shape[1]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("model.layers."))
    return disguise.rotate_residual(state, layers, disguise.random_rotation(hidden, torch.Generator().manual_seed(seed)))


def grow_hidden(state, extra, generator, scale=0.02):
    """The residual stream widened by `extra` new dims: new embedding columns and new input columns
    of every weight that reads the residual drawn small, new output rows of every weight that
    writes it zero, new norm gains 1: close to the parent's function until training uses them."""
    hidden, grown = state["model.embed_tokens.weight"].shape[1], {}
    for name, tensor in state.items():
        if name.endswith(("embed_tokens.weight", "lm_head.weight", "q_proj.weight", "k_proj.weight",
                          "v_proj.weight", "gate_proj.weight", "up_proj.weight")):
            tensor = torch.cat([tensor, scale * torch.randn(tensor.shape[0], extra, generator=generator)], dim=1)
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            tensor = torch.cat([tensor, torch.zeros(extra, tensor.shape[1])], dim=0)
        elif name.endswith("norm.weight") and tensor.shape == (hidden,):     # not the per-head q/k norms
            tensor = torch.cat([tensor, torch.ones(extra)])
        grown[name] = tensor.contiguous()
    return grown
