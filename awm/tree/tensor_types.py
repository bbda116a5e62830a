"""A merge's coefficients per kind of tensor. Merge tools may mix attention and MLP weights with
different coefficients (SLERP with one t for self_attn and another for mlp is common); W_q / W_k
show only the attention's. Each model's weight sample (a few rows of o_proj, v_proj, the MLP,
the norms and the embedding; awm.readers.weight_sample) is fitted per kind of tensor, pooled
over the sampled layers.
"""
import torch

from awm.tree import rounding

# Which kind of tensor a sampled weight is, by the words its name holds (first match wins).
KINDS = (("norm", ("norm",)), ("attention", ("attn", "attention")), ("mlp", ("mlp", "ffn", "expert")),
         ("embedding", ("embed", "wte", "word_embeddings")), ("output", ("lm_head", "output")))
# Parents whose sampled tensors of a kind lie closer than this (relative) leave its coefficients
# undetermined: what tells them apart is of the size of storage rounding.
DISTINGUISHABLE = 4e-3


def kind_of(name):
    return next((kind for kind, words in KINDS if any(word in name for word in words)), None)


def weights_by_kind(child, parents):
    """{kind: [weight per parent]} from least squares on the pooled samples of each kind, or
    None for a kind whose parents' samples cannot be told apart. child: {tensor: rows};
    parents: [{tensor: rows}] in the merge's order (a task-arithmetic base first)."""
    pooled, bits = {}, None
    for name, rows in child.items():
        kind = kind_of(name)
        if kind is None or not all(name in p and p[name].shape == rows.shape for p in parents):
            continue
        bits = rounding.bits_of(rows.dtype)
        target, columns = pooled.setdefault(kind, ([], [[] for _ in parents]))
        target.append(rows.double().reshape(-1))
        for column, parent in zip(columns, parents):
            column.append(parent[name].double().reshape(-1))
    return {kind: _fit(torch.cat(target), [torch.cat(column) for column in columns], bits)
            for kind, (target, columns) in pooled.items()}


def _fit(target, columns, bits):
    spread = min(float((a - b).norm()) for i, a in enumerate(columns) for b in columns[i + 1:])
    if spread <= DISTINGUISHABLE * float(target.norm()):
        return None
    return [round(float(w), 4) for w in rounding.least_squares(target, columns, bits)]
