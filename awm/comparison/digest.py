"""Step 0 of a comparison: reduce a checkpoint to what any comparison needs from it.

A ``ModelDigest`` holds the model's description, vocabulary and embedding, and per layer the
Gram matrices of W_q and W_k and the QK circuit. Alignment only re-indexes those matrices, so
in a suite or a library each model is read and digested once and reused.
"""
import time
from dataclasses import dataclass

import torch

from awm.method import cka
from awm.readers.weight_sample import read_sample
from awm.witnesses import body_rows

FLOAT32 = 4
# Precision of the per-layer products (Grams, circuit). "exact": float32 throughout. "fast":
# bfloat16 operands and results (float32 accumulation inside the product), about twice the
# CPU rate on AVX512-BF16 / AMX cores and on GPUs; the results' rounding moves per-layer CKAs by
# up to ~1e-3 percentage points (docs/performance.md), so it is not the default.
PRODUCT_DTYPES = {"exact": torch.float32, "fast": torch.bfloat16}


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


def qk_circuit(w_q, w_k, heads, input_gain=None, q_gain=None, k_gain=None, dtype=torch.float32):
    """M = sum_h (G_q,h W_q,h D)^T (G_k W_k,g(h) D), the bilinear form q.k of every head at
    offset 0, with D the attention-input norm gain and G the per-head q/k norm gains.

    Query heads of one key/value group share W_k, so they are summed before the product.
    """
    w_q = _fold_gains(w_q, q_gain, input_gain, heads.head_dim)
    w_k = _fold_gains(w_k, k_gain, input_gain, heads.head_dim)
    group = heads.n_head // heads.n_kv
    hidden = w_q.shape[1]
    summed_q = w_q.reshape(heads.n_kv, group, -1, hidden).sum(1).reshape(-1, hidden)
    return (summed_q.to(dtype).t() @ w_k.to(dtype)).to(w_k.dtype)


class ModelDigest:
    """Everything a comparison needs from one model, read once."""

    kept_axes = None      # (device, sampled token ids, axes) of its last alignment: see _principal_axes

    def __init__(self, checkpoint, device, keep_layers=False, with_circuit=True, progress=False, precision="exact",
                 shared_layers=None):
        started = time.perf_counter()
        self.precision = precision
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
        self.profiles = {}        # per-layer body profiles, when a pair asks the body (awm.witnesses.body_alignment)
        self.spectra = {}         # per-layer QK-circuit spectra, likewise (awm.witnesses.circuit_spectra)
        self.rows = {}            # W_q / W_k rows of a few layers, for the body-weights test (awm.witnesses.body_rows)
        self._row_layers = set(body_rows.row_layers(self.num_layers))
        self._sample = None       # a few rows of the other weights, for the family tree's copy test (read on first use)
        if shared_layers is not None:         # (kernels, rows) other digests of this very model filled (LayerStore)
            self._kept, self.rows = shared_layers
        self.read_seconds = time.perf_counter() - started
        self.compute_seconds = 0.0

    @staticmethod
    def layer_bytes(checkpoint, with_circuit=True):
        return (2 + with_circuit) * checkpoint.num_layers * checkpoint.hidden_size ** 2 * FLOAT32

    def release_embedding(self):
        """Drop what only the alignment reads (embedding, vocabulary): the layers stay readable."""
        self.embedding = self.vocab = self.kept_axes = None

    def size_bytes(self):
        """Memory this digest holds: the embedding, plus the layer kernels when kept."""
        kept = self.layer_bytes(self.checkpoint, self.with_circuit) if self._kept is not None else 0
        rows = sum(w.numel() * w.element_size() for kept in self.rows.values() for w in kept)
        return self.embedding.numel() * self.embedding.element_size() + kept + rows

    def kept_rows(self):
        """{layer: (W_q, W_k, gain)} of the row layers, reading the ones no pass has read yet."""
        for index in sorted(self._row_layers - set(self.rows)):
            self.layer(index)
        return self.rows

    def weight_sample(self):
        """A few rows of every weight of the row layers besides W_q / W_k, and of the embedding and
        output, as stored (awm.readers.weight_sample): read once, on first use."""
        if self._sample is None:
            started = time.perf_counter()
            self._sample = read_sample(self.checkpoint, sorted(self._row_layers))
            self.read_seconds += time.perf_counter() - started
        return self._sample

    def layer(self, index):
        if self._kept is not None and index in self._kept:
            return self._kept[index]
        started = time.perf_counter()
        ckpt = self.checkpoint
        w_q, w_k = ckpt.query_key(index, self.device)
        family = ckpt.family.family
        input_gain = ckpt.attention_input_gain(index) if self.with_circuit or index in self._row_layers else None
        gains = (
            input_gain,
            ckpt.optional_vector(family.q_norm, index, family.norm_offset),
            ckpt.optional_vector(family.k_norm, index, family.norm_offset),
        ) if self.with_circuit else None
        if index in self._row_layers and index not in self.rows:
            self.rows[index] = body_rows.kept_rows(w_q, w_k, input_gain, self.meta["dtype"])
        self.layer_reads += 1
        read_done = time.perf_counter()
        dtype = PRODUCT_DTYPES[self.precision]
        circuit = qk_circuit(w_q, w_k, ckpt.heads, *gains, dtype=dtype) if self.with_circuit else None
        kernels = LayerKernels(cka.gram(w_q.to(dtype)).float(), cka.gram(w_k.to(dtype)).float(), circuit)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.read_seconds += read_done - started
        self.compute_seconds += time.perf_counter() - read_done
        if self._kept is not None:
            self._kept[index] = kernels
        return kernels


def digest_path(path, device, keep_layers=False, with_circuit=True, progress=False, vocab_match="bytes", precision="exact",
                adapter_base=None):
    from awm.readers import open_model

    return ModelDigest(open_model(path, vocab_match, progress, adapter_base), device, keep_layers, with_circuit, progress, precision)


class LayerStore:
    """Layer kernels and rows kept across the digests of one model opened again and again (a
    library map opens an entry for every batch it is in), within a byte budget: a model is
    admitted whole while the budget has room for all its layers, and kept until the process ends."""

    def __init__(self, budget):
        self.budget, self.used, self.models = budget, 0, {}

    def shared(self, key, size):
        """(kernels, rows) dicts for the model `key` whose layers take `size` bytes, or None when
        they do not fit."""
        if key not in self.models:
            if self.used + size > self.budget:
                return None
            self.used += size
            self.models[key] = ({}, {})
        return self.models[key]
