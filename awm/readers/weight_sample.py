"""A small, fixed sample of a model's weights beyond W_q / W_k: a few rows of every other
tensor of a few layers (o_proj, the MLP, the norms), of the embedding and of the output.

Two stored copies of one model agree on every sampled entry; a fine-tune, an abliteration
(residual writers projected off a direction, the embedding included) or an MLP-only LoRA
changes some of them even where W_q / W_k are left alone. Rows are read, never whole tensors:
a sample costs a few reads per tensor.
"""
import torch

from awm.errors import CheckpointError

SAMPLE_ROWS = 4                  # rows read at each spot of a matrix
SAMPLE_SPOTS = (1 / 3, 2 / 3)    # where, as a share of its rows: past the first rows (special tokens a fine-tune never moves)
TENSORS_PER_LAYER = 12           # a mixture of experts' many expert matrices: the first few, by name
OUTPUT_TENSORS = ("lm_head.weight", "output.weight", "norm.weight", "output_norm.weight", "final_layernorm.weight")
# llama.cpp's names for the weights a GGUF shares with a Hugging Face checkpoint: a GGUF's sample
# is named as the float model's, so the two can be compared weight by weight.
GGUF_NAMES = {"blk.": "layers.", ".attn_v.": ".self_attn.v_proj.", ".attn_output.": ".self_attn.o_proj.",
              ".ffn_gate.": ".mlp.gate_proj.", ".ffn_up.": ".mlp.up_proj.", ".ffn_down.": ".mlp.down_proj.",
              ".attn_norm.": ".input_layernorm.", ".ffn_norm.": ".post_attention_layernorm.",
              "token_embd.": "embed_tokens.", "output_norm.": "norm.", "output.": "lm_head."}


def read_sample(checkpoint, layers):
    """{name without the checkpoint's prefix: rows as stored} for every tensor of `layers`
    besides W_q / W_k, and the embedding, final norm and output head. Tensors that cannot be
    read as plain numbers (float8 without its scales) are left out."""
    resolved = checkpoint.family
    family = resolved.family
    own = {resolved.name(t, i) for i in layers for t in (family.query, family.key) if t}
    names = []
    for i in layers:
        container = resolved.name(family.query[:family.query.index("{i}")] + f"{i}.")
        in_layer = sorted(n for n in checkpoint.store.tensors if n.startswith(container) and n not in own)
        names += in_layer[:TENSORS_PER_LAYER]
    names += [resolved.embedding] + [n for t in OUTPUT_TENSORS for n in dict.fromkeys((resolved.name(t), t))
                                      if n in checkpoint.store.tensors]
    sample = {}
    for name in dict.fromkeys(names):
        rows = _rows(checkpoint, name)
        if rows is not None:
            sample[_common_name(name[len(resolved.prefix):] if name.startswith(resolved.prefix) else name, checkpoint)] = rows
    return sample


def _common_name(name, checkpoint):
    if checkpoint.model_type != "gguf":
        return name
    for gguf, common in GGUF_NAMES.items():
        if name.startswith(gguf) or gguf.startswith(".") and gguf in name:
            name = name.replace(gguf, common, 1)
    return name


def _rows(checkpoint, name):
    info = checkpoint.store.tensors[name]
    dtype = str(info.dtype).upper().replace("_", "")
    if dtype.startswith(("F8", "FLOAT8")):
        return None
    shape = tuple(info.shape)
    try:
        if len(shape) == 1:
            rows = checkpoint.store.read(name)
        elif len(shape) == 2:
            starts = sorted({min(int(spot * shape[0]), max(0, shape[0] - SAMPLE_ROWS)) for spot in SAMPLE_SPOTS})
            parts = [checkpoint.store.read_rows(name, start, min(start + SAMPLE_ROWS, shape[0])) for start in starts]
            rows = torch.cat(parts)
        else:
            return None
    except CheckpointError:
        return None
    return rows if rows.is_floating_point() else None
