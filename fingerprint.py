"""Compare two models: align hidden dims on the shared vocabulary, then score every layer.

A ``ModelDigest`` holds what any comparison needs from one model (metadata, vocabulary,
embedding, and per layer the Gram matrices of W_q and W_k and the QK circuit). Alignment only
re-indexes those matrices, so in a suite each model is read and digested once and reused.
"""
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

import similarity_metrics as sm
from errors import ComparisonError

FLOAT32 = 4


@dataclass
class LayerKernels:
    query: torch.Tensor      # W_q^T W_q  (hidden x hidden)
    key: torch.Tensor        # W_k^T W_k
    circuit: torch.Tensor    # sum over heads of W_q,h^T W_k,g(h), norm gains folded in (None: not computed)


def _row_gain(gain, rows, head_dim):
    """A q/k norm gain as one factor per output row (per-head gains repeat for every head)."""
    if gain is None:
        return None
    if gain.numel() == rows:
        return gain
    if gain.numel() == head_dim and rows % head_dim == 0:
        return gain.repeat(rows // head_dim)
    return None


def _fold_gains(weight, output_gain, input_gain, head_dim):
    """diag(output gain) W diag(input gain): the projection as the model effectively applies it."""
    row_gain = _row_gain(output_gain, weight.shape[0], head_dim)
    if row_gain is not None:
        weight = weight * row_gain.to(weight)[:, None]
    if input_gain is not None and input_gain.numel() == weight.shape[1]:
        weight = weight * input_gain.to(weight)[None, :]
    return weight


def qk_circuit(w_q, w_k, heads, input_gain=None, q_gain=None, k_gain=None):
    """M = sum_h (G_q,h W_q,h D)^T (G_k W_k,g(h) D), the bilinear form q.k of every head at
    offset 0, with D the attention-input norm gain and G the per-head q/k norm gains.

    Query heads of one key/value group share W_k, so they are summed before the product.
    """
    w_q = _fold_gains(w_q, q_gain, input_gain, heads.head_dim)
    w_k = _fold_gains(w_k, k_gain, input_gain, heads.head_dim)
    group = heads.n_head // heads.n_kv
    hidden = w_q.shape[1]
    summed_q = w_q.reshape(heads.n_kv, group, -1, hidden).sum(1).reshape(-1, hidden)
    return summed_q.t() @ w_k


class ModelDigest:
    """Everything a comparison needs from one model, read once."""

    def __init__(self, checkpoint, device, keep_layers=False, with_circuit=True, progress=False):
        started = time.perf_counter()
        self.checkpoint = checkpoint
        self.device = device
        self.meta = checkpoint.describe()
        self.vocab = checkpoint.vocab
        self.embedding = checkpoint.read_embedding(progress)
        self.num_layers = checkpoint.num_layers
        self.hidden_size = checkpoint.hidden_size
        self._kept = {} if keep_layers else None
        self.with_circuit = with_circuit
        self.layer_reads = 0
        self.read_seconds = time.perf_counter() - started
        self.compute_seconds = 0.0

    @staticmethod
    def layer_bytes(checkpoint, with_circuit=True):
        return (2 + with_circuit) * checkpoint.num_layers * checkpoint.hidden_size ** 2 * FLOAT32

    def size_bytes(self):
        """Memory this digest holds: the embedding, plus the layer kernels when kept."""
        kept = self.layer_bytes(self.checkpoint, self.with_circuit) if self._kept is not None else 0
        return self.embedding.numel() * self.embedding.element_size() + kept

    def layer(self, index):
        if self._kept is not None and index in self._kept:
            return self._kept[index]
        started = time.perf_counter()
        ckpt = self.checkpoint
        w_q, w_k = ckpt.query_key(index, self.device)
        family = ckpt.family.family
        gains = (
            ckpt.attention_input_gain(index),
            ckpt.optional_vector(family.q_norm, index, family.norm_offset),
            ckpt.optional_vector(family.k_norm, index, family.norm_offset),
        ) if self.with_circuit else None
        self.layer_reads += 1
        read_done = time.perf_counter()
        circuit = qk_circuit(w_q, w_k, ckpt.heads, *gains) if self.with_circuit else None
        kernels = LayerKernels(sm.gram(w_q), sm.gram(w_k), circuit)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.read_seconds += read_done - started
        self.compute_seconds += time.perf_counter() - read_done
        if self._kept is not None:
            self._kept[index] = kernels
        return kernels


# ----------------------------------------------------------------------------- alignment
@dataclass
class Alignment:
    base_index: torch.Tensor
    sign: torch.Tensor
    shared_tokens: int
    aligned: bool
    mean_abs_cosine: float
    note: str = ""
    timings: dict = None


def shared_token_ids(base_vocab, target_vocab):
    shared = sorted((base_vocab[key], target_vocab[key]) for key in base_vocab.keys() & target_vocab.keys())
    ids = torch.as_tensor(shared, dtype=torch.long).reshape(-1, 2)
    return ids[:, 0], ids[:, 1]


def align(base, target, device):
    """Match each hidden dim of the target to a base dim (and sign) on the shared tokens."""
    base_ids = target_ids = None
    if base.vocab and target.vocab:
        base_ids, target_ids = shared_token_ids(base.vocab, target.vocab)
    if base_ids is None or len(base_ids) == 0:
        why = "one model has no tokenizer" if not (base.vocab and target.vocab) else "the tokenizers share no tokens"
        if base.hidden_size != target.hidden_size:
            raise ComparisonError(f"cannot align hidden dimensions: {why} and the hidden sizes differ ({base.hidden_size} vs {target.hidden_size})")
        identity = torch.arange(target.hidden_size)
        return Alignment(identity, torch.ones(target.hidden_size), 0, False, float("nan"),
                         f"UNALIGNED: {why}; dims compared in stored order", {"cosine_s": 0.0, "lap_s": 0.0})
    target_rows = lambda start, stop: target.embedding[target_ids[start:stop]]
    base_rows = lambda start, stop: base.embedding[base_ids[start:stop]]
    started = time.perf_counter()
    cosine = sm.column_cosine(target_rows, base_rows, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cosine_done = time.perf_counter()
    base_index, sign, quality = sm.align_hidden(cosine)
    timings = {"cosine_s": round(cosine_done - started, 3), "lap_s": round(time.perf_counter() - cosine_done, 3)}
    note = ""
    if len(base_ids) < target.hidden_size:
        note = f"only {len(base_ids)} shared tokens for {target.hidden_size} hidden dims: the alignment is underdetermined"
    return Alignment(base_index, sign, len(base_ids), True, quality, note, timings)


# ----------------------------------------------------------------------------- layer scores
METRICS = ("wq", "wk", "qk_circuit")


def _unit_kernels(kernels, alignment=None):
    """Unit U-centered W_q, W_k and circuit kernels, re-indexed into target dims for the base."""
    matrices = (kernels.query, kernels.key, kernels.circuit)
    if alignment is None:
        return [None if m is None else sm.unit_u_centered(m) for m in matrices]
    # Re-indexing makes fresh matrices, which may then be centered in place.
    return [None if m is None else sm.unit_u_centered(sm.reindex_kernel(m, alignment.base_index, alignment.sign), in_place=True)
            for m in matrices]


def layer_similarities(base, target, alignment, progress=True):
    """Similarity arrays (3, base layers, target layers); NaN where a pair was not computed.

    Equal depth compares layer i with layer i only. Different depth needs every pair: the
    shallower model's unit kernels are kept while the deeper model streams past them.
    """
    sims = np.full((len(METRICS), base.num_layers, target.num_layers), np.nan)
    bar = dict(disable=None if progress else True, leave=False, unit="layer")
    if base.num_layers == target.num_layers:
        for i in tqdm(range(base.num_layers), desc="layers", **bar):
            base_units = _unit_kernels(base.layer(i), alignment)
            target_units = _unit_kernels(target.layer(i))
            sims[:, i, i] = [sm.unit_inner(b, t) for b, t in zip(base_units, target_units)]
        return sims
    base_is_shallow = base.num_layers < target.num_layers
    shallow, deep = (base, target) if base_is_shallow else (target, base)
    kept = [_unit_kernels(shallow.layer(i), alignment if base_is_shallow else None)
            for i in tqdm(range(shallow.num_layers), desc="layers (shallower model)", **bar)]
    for j in tqdm(range(deep.num_layers), desc="layers (deeper model)", **bar):
        deep_units = _unit_kernels(deep.layer(j), None if base_is_shallow else alignment)
        for i, shallow_units in enumerate(kept):
            values = [sm.unit_inner(s, d) for s, d in zip(shallow_units, deep_units)]
            if base_is_shallow:
                sims[:, i, j] = values
            else:
                sims[:, j, i] = values
    return sims


def _mean(values):
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def score_layers(sims):
    """Paper scores on the paper's layer map, and the circuit score on its own map."""
    q, k, circuit = sims
    paper_map = sm.match_layers((q + k) / 2)
    circuit_map = sm.match_layers(circuit)
    wq = _mean(q[i, j] for i, j in paper_map)
    wk = _mean(k[i, j] for i, j in paper_map)
    return {
        "wq": wq, "wk": wk, "final": _mean([wq, wk]),
        "qk_circuit": _mean(circuit[i, j] for i, j in circuit_map),
    }, paper_map, circuit_map


# ----------------------------------------------------------------------------- the pair
def compare(digest_a, digest_b, device, progress=True):
    """Full AWM comparison of two digests; returns a plain dict (see README, JSON schema)."""
    a_is_base = digest_a.hidden_size >= digest_b.hidden_size
    base, target = (digest_a, digest_b) if a_is_base else (digest_b, digest_a)
    alignment = align(base, target, device)
    layer_work = lambda: sum(d.read_seconds + d.compute_seconds for d in (digest_a, digest_b))
    aligned_at, work_before = time.perf_counter(), layer_work()
    sims = layer_similarities(base, target, alignment, progress)
    scores, paper_map, circuit_map = score_layers(sims)
    # Report layers as (layer of A, layer of B) whatever side was the base.
    orient = (lambda i, j: [i, j]) if a_is_base else (lambda i, j: [j, i])
    layers = [dict(zip(("layer_a", "layer_b"), orient(i, j)), **{m: _finite(sims[n][i, j]) for n, m in enumerate(METRICS)})
              for i, j in paper_map]
    same_depth = digest_a.num_layers == digest_b.num_layers
    evidence = {
        "base_model": "a" if a_is_base else "b",
        "shared_tokens": alignment.shared_tokens,
        "aligned": alignment.aligned,
        "matched_hidden_dims": int(len(alignment.base_index)),
        "base_hidden_dims": base.hidden_size,
        "sign_flips": int((alignment.sign < 0).sum()),
        "mean_abs_cosine": _finite(alignment.mean_abs_cosine),
        "layers_a": digest_a.num_layers,
        "layers_b": digest_b.num_layers,
        "layer_map": None if same_depth else [orient(i, j) for i, j in paper_map],
        "qk_circuit_layer_map": None if same_depth else [orient(i, j) for i, j in circuit_map],
        "undefined_layer_scores": sum(layer[m] is None for layer in layers for m in ("wq", "wk")),
        "notes": [alignment.note] if alignment.note else [],
    }
    if evidence["undefined_layer_scores"]:
        evidence["notes"].append(f"CKA undefined for {evidence['undefined_layer_scores']} layer matrices "
                                 "(a zero or constant matrix); scores average the defined ones")
    finished = time.perf_counter()
    return {
        "scores": {name: _finite(value) for name, value in scores.items()},
        "evidence": evidence,
        "layers": layers,
        # Reading and Gram products are timed by the digests; what remains is alignment and CKA.
        "timings": {**alignment.timings, "cka_s": round(finished - aligned_at - (layer_work() - work_before), 3)},
    }


def _finite(value):
    return float(value) if value is not None and np.isfinite(value) else None


def digest_path(path, device, keep_layers=False, with_circuit=True, progress=False):
    from model_reader import ModelCheckpoint

    return ModelDigest(ModelCheckpoint(path), device, keep_layers, with_circuit, progress)


def compare_digests(digest_a, digest_b, device, null, progress=True):
    """Compare two digests and assemble the JSON-ready report (scores in percent)."""
    import report

    result = report.to_percent(compare(digest_a, digest_b, device, progress))
    timings = {
        "read_s": round(digest_a.read_seconds + digest_b.read_seconds, 3),
        "gram_s": round(digest_a.compute_seconds + digest_b.compute_seconds, 3),
        **result["timings"],
        "device": str(device),
    }
    return report.pair_report(result, digest_a.meta, digest_b.meta, null, timings)
