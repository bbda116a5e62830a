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

import allocator
import report
import similarity_metrics as sm
from errors import AwmError, ComparisonError

FLOAT32 = 4
# Precision of the per-layer products (Grams, circuit). "exact": float32 throughout. "fast":
# bfloat16 operands and results (float32 accumulation inside the product), about twice the
# CPU rate on AVX512-BF16 / AMX cores and on GPUs; the results' rounding moves per-layer CKAs by
# up to ~1e-3 percentage points (README, Performance), so it is not the default.
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

    def __init__(self, checkpoint, device, keep_layers=False, with_circuit=True, progress=False, precision="exact"):
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
        dtype = PRODUCT_DTYPES[self.precision]
        circuit = qk_circuit(w_q, w_k, ckpt.heads, *gains, dtype=dtype) if self.with_circuit else None
        kernels = LayerKernels(sm.gram(w_q.to(dtype)).float(), sm.gram(w_k.to(dtype)).float(), circuit)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.read_seconds += read_done - started
        self.compute_seconds += time.perf_counter() - read_done
        if self._kept is not None:
            self._kept[index] = kernels
        return kernels


# ----------------------------------------------------------------------------- alignment
# Principal axes of each embedding that the residual cosine and residual scores remove: the
# mean vector plus this many axes (at most 1/16 of the dims) take out what the columns of
# anisotropic embeddings share. Measured on scratch-trained models vs SmolLM2: with 8 axes a
# few outlier dims still correlate with everything; with 16 nothing does. A derived pair
# loses only ~k/d of each column's energy.
COMMON_AXES = 16
# The axes come from an even sample of this many shared tokens: dominant directions need no more.
AXES_SAMPLE_TOKENS = 16384
# Fewer shared tokens than this leave the correspondence test without power: not run.
MIN_TEST_TOKENS = 64


def common_axes(hidden):
    return max(1, min(COMMON_AXES, hidden // 16))


@dataclass
class Alignment:
    base_index: torch.Tensor
    sign: torch.Tensor
    shared_tokens: int
    aligned: bool
    mean_abs_cosine: float
    note: str = ""
    timings: dict = None
    correspondence: sm.CorrespondenceTest = None
    base_common: torch.Tensor = None      # orthonormal common directions, base coordinates
    target_common: torch.Tensor = None    # the same for the target


def shared_token_ids(base_vocab, target_vocab):
    shared = sorted((base_vocab[key], target_vocab[key]) for key in base_vocab.keys() & target_vocab.keys())
    ids = torch.as_tensor(shared, dtype=torch.long).reshape(-1, 2)
    return ids[:, 0], ids[:, 1]


def _rows(digest, ids):
    return lambda start, stop: digest.embedding[ids[start:stop]]


def align(base, target, device):
    """Match each hidden dim of the target to a base dim (and sign) on the shared tokens, and
    test whether the matched dims genuinely correspond (see similarity_metrics)."""
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
    started = time.perf_counter()
    axes = [_principal_axes(digest, ids, device) for digest, ids in ((target, target_ids), (base, base_ids))]
    # Two interleaved halves of the shared tokens: the test finds partners on one and checks
    # them on the other; the alignment itself uses their sum, i.e. every shared token.
    halves = [(target_ids[h::2], base_ids[h::2]) for h in (0, 1)]
    half_products = [sm.column_products(_rows(target, t), _rows(base, b), device, *axes) for t, b in halves]
    products = half_products[0] + half_products[1]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cosine_done = time.perf_counter()
    base_index, sign, quality = sm.align_hidden(sm.cosine_from_products(products))
    lap_done = time.perf_counter()
    test = None
    if len(base_ids) >= MIN_TEST_TOKENS:
        residuals = [sm.residual_cosine(p, sm.common_directions(p, "a", axes[0]), sm.common_directions(p, "b", axes[1]))
                     for p in half_products]
        test = sm.correspondence_test(*residuals, base_index)
    timings = {"cosine_s": round(cosine_done - started, 3), "lap_s": round(lap_done - cosine_done, 3),
               "correspondence_s": round(time.perf_counter() - lap_done, 3)}
    note = ""
    if len(base_ids) < target.hidden_size:
        note = f"only {len(base_ids)} shared tokens for {target.hidden_size} hidden dims: the alignment is underdetermined"
    return Alignment(base_index, sign, len(base_ids), True, quality, note, timings, test,
                     base_common=sm.projector_basis(products.sum_b / products.rows, axes[1]),
                     target_common=sm.projector_basis(products.sum_a / products.rows, axes[0]))


def _principal_axes(digest, ids, device):
    """The embedding's top principal axes from an even sample of the shared tokens, so the
    only pass over all of them stays the cosine's. Kept on the digest for its next pair: a
    model compared with many others of its tokenizer samples the same tokens each time."""
    sample_ids = ids[::max(1, len(ids) // AXES_SAMPLE_TOKENS)]
    kept = digest.kept_axes
    if kept is not None and kept[0] == device and torch.equal(kept[1], sample_ids):
        return kept[2]
    sample = digest.embedding[sample_ids].to(device=device, dtype=torch.float32)
    axes = sm.principal_axes(sample, common_axes(digest.hidden_size))
    digest.kept_axes = (device, sample_ids, axes)
    return axes


# ----------------------------------------------------------------------------- layer scores
# Residual metrics: the same CKAs after each model's common embedding directions are
# projected out of its kernels (see README, "How the verdict is reached").
METRICS = ("wq", "wk", "qk_circuit", "wq_residual", "wk_residual", "qk_circuit_residual")


PLAIN, RESIDUAL = "plain", "residual"


def _prepared_kernels(kernels, alignment, is_base, groups):
    """The layer's matrices in METRICS order as sm.Kernel (None for a group not asked for):
    the base's in target dims, with the alignment's signs. A generator: a residual copy
    exists only while it is used, so a layer never holds all of them at once."""
    # The Grams are exactly symmetric (sm.gram mirrors its upper triangle); the circuit is not,
    # nor is a projected copy, whose two products round differently.
    matrices = ((kernels.query, True), (kernels.key, True), (kernels.circuit, False))
    common = alignment.base_common if is_base else alignment.target_common

    def prepare(matrix, is_residual, symmetric):
        if matrix is None or (is_residual and common is None):
            return None
        if is_residual:
            matrix, symmetric = sm.project_out(matrix.clone(), common), False
        if is_base and alignment.aligned:
            return sm.Kernel(matrix, alignment.base_index, alignment.sign, symmetric)
        return sm.Kernel(matrix, symmetric=symmetric)       # read only: the digest may keep it for other pairs

    for group in (PLAIN, RESIDUAL):
        for matrix, symmetric in matrices:
            yield prepare(matrix, group == RESIDUAL, symmetric) if group in groups else None


def _layer_values(base_kernels, target_kernels, alignment, groups):
    """CKA of one layer pair for every metric of the groups asked for (NaN for the others)."""
    return [sm.u_cka(b, t) for b, t in zip(_prepared_kernels(base_kernels, alignment, True, groups),
                                            _prepared_kernels(target_kernels, alignment, False, groups))]


def layer_similarities(base, target, alignment, progress=True, groups=(PLAIN,)):
    """Similarity arrays (len(METRICS), base layers, target layers); NaN where a pair or a
    metric was not computed (only the metric groups asked for are).

    Equal depth compares layer i with layer i only. Different depth needs every pair: the
    shallower model's prepared kernels are kept while the deeper model streams past them.
    """
    sims = np.full((len(METRICS), base.num_layers, target.num_layers), np.nan)
    bar = dict(disable=None if progress else True, leave=False, unit="layer")
    if base.num_layers == target.num_layers:
        for i in tqdm(range(base.num_layers), desc="layers", **bar):
            sims[:, i, i] = _layer_values(base.layer(i), target.layer(i), alignment, groups)
        return sims
    base_is_shallow = base.num_layers < target.num_layers
    shallow, deep = (base, target) if base_is_shallow else (target, base)
    kept = [[k if k is None else k.selected() for k in _prepared_kernels(shallow.layer(i), alignment, base_is_shallow, groups)]
            for i in tqdm(range(shallow.num_layers), desc="layers (shallower model)", **bar)]
    for j in tqdm(range(deep.num_layers), desc="layers (deeper model)", **bar):
        deep_kernels = list(_prepared_kernels(deep.layer(j), alignment, not base_is_shallow, groups))
        for i, shallow_kernels in enumerate(kept):
            values = [sm.u_cka(s, d) for s, d in zip(shallow_kernels, deep_kernels)]
            if base_is_shallow:
                sims[:, i, j] = values
            else:
                sims[:, j, i] = values
    return sims


def _mean(values):
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _scores_on_maps(q, k, circuit, paper_map, circuit_map):
    wq = _mean(q[i, j] for i, j in paper_map)
    wk = _mean(k[i, j] for i, j in paper_map)
    return {"wq": wq, "wk": wk, "final": _mean([wq, wk]), "qk_circuit": _mean(circuit[i, j] for i, j in circuit_map)}


def score_layers(sims):
    """Paper scores on the paper's layer map, the circuit score on its own map; the residual
    scores on the same maps, so they differ from the plain ones only by what was projected out."""
    q, k, circuit = sims[:3]
    paper_map = sm.match_layers((q + k) / 2)
    circuit_map = sm.match_layers(circuit)
    scores = _scores_on_maps(q, k, circuit, paper_map, circuit_map)
    residual = _scores_on_maps(*sims[3:], paper_map, circuit_map)
    return scores, residual, paper_map, circuit_map


# ----------------------------------------------------------------------------- the pair
def needs_residual(alignment, scores, null):
    """The verdict reads the residual scores only when the embeddings show no correspondence
    and a plain score is above the reference: only then are they worth a second CKA pass."""
    test = alignment.correspondence
    above = any(report.above_reference(None if v is None or not np.isfinite(v) else 100.0 * v, null)
                for v in (scores["final"], scores["qk_circuit"]))
    return test is not None and test.p_value > report.CORRESPONDENCE_P and above


GROUP_ROWS = {PLAIN: slice(0, 3), RESIDUAL: slice(3, 6)}


class PairScoring:
    """One comparison under way: which model is the base, the alignment, and the per-layer
    similarities as a pass over the layers fills them."""

    def __init__(self, digest_a, digest_b, device):
        if digest_a.precision != digest_b.precision:
            raise ComparisonError(f"digests of different precision ({digest_a.precision} vs {digest_b.precision})")
        self.digest_a, self.digest_b = digest_a, digest_b
        self.a_is_base = digest_a.hidden_size >= digest_b.hidden_size
        self.base, self.target = (digest_a, digest_b) if self.a_is_base else (digest_b, digest_a)
        self.alignment = align(self.base, self.target, device)
        self.sims = np.full((len(METRICS), self.base.num_layers, self.target.num_layers), np.nan)
        self.cka_seconds = 0.0

    @property
    def same_depth(self):
        return self.digest_a.num_layers == self.digest_b.num_layers

    def groups(self, residual):
        return (PLAIN, RESIDUAL) if residual == "always" and self.alignment.base_common is not None else (PLAIN,)

    def add_layer(self, index, kernels_a, kernels_b, groups):
        """Equal depth: the similarities of layer `index` of both models, for these groups."""
        started = time.perf_counter()
        base, target = (kernels_a, kernels_b) if self.a_is_base else (kernels_b, kernels_a)
        values = _layer_values(base, target, self.alignment, groups)
        for group in groups:
            rows = GROUP_ROWS[group]
            self.sims[rows, index, index] = values[rows]
        self.cka_seconds += time.perf_counter() - started

    def pass_over_layers(self, groups, progress):
        """This pair's own pass over both models' layers, timed without the digests' reading
        and products."""
        work = lambda: sum(_digest_work(self.digest_a, self.digest_b))
        started, work_before = time.perf_counter(), work()
        sims = layer_similarities(self.base, self.target, self.alignment, progress, groups)
        for group in groups:
            self.sims[GROUP_ROWS[group]] = sims[GROUP_ROWS[group]]
        self.cka_seconds += time.perf_counter() - started - (work() - work_before)

    def needs_residual(self, null):
        return needs_residual(self.alignment, score_layers(self.sims)[0], null)

    def result(self, work):
        """The pair's plain result dict (see compare); work: the digests' (read_s, gram_s) it counts."""
        alignment, sims, digest_a, digest_b = self.alignment, self.sims, self.digest_a, self.digest_b
        scores, residual_scores, paper_map, circuit_map = score_layers(sims)
        # Report layers as (layer of A, layer of B) whatever side was the base.
        orient = (lambda i, j: [i, j]) if self.a_is_base else (lambda i, j: [j, i])
        layers = [dict(zip(("layer_a", "layer_b"), orient(i, j)), **{m: _finite(sims[n][i, j]) for n, m in enumerate(METRICS[:3])})
                  for i, j in paper_map]
        evidence = {
            "base_model": "a" if self.a_is_base else "b",
            "shared_tokens": alignment.shared_tokens,
            "aligned": alignment.aligned,
            "matched_hidden_dims": int(len(alignment.base_index)),
            "base_hidden_dims": self.base.hidden_size,
            "sign_flips": int((alignment.sign < 0).sum()),
            "mean_abs_cosine": _finite(alignment.mean_abs_cosine),
            "correspondence": _correspondence_record(alignment.correspondence),
            "layers_a": digest_a.num_layers,
            "layers_b": digest_b.num_layers,
            "layer_map": None if self.same_depth else [orient(i, j) for i, j in paper_map],
            "qk_circuit_layer_map": None if self.same_depth else [orient(i, j) for i, j in circuit_map],
            "undefined_layer_scores": sum(layer[m] is None for layer in layers for m in ("wq", "wk")),
            "notes": [alignment.note] if alignment.note else [],
        }
        if evidence["undefined_layer_scores"]:
            evidence["notes"].append(f"CKA undefined for {evidence['undefined_layer_scores']} layer matrices "
                                     "(a zero or constant matrix); scores average the defined ones")
        read_s, gram_s = work
        return {
            "scores": {name: _finite(value) for name, value in scores.items()},
            "residual_scores": {name: _finite(value) for name, value in residual_scores.items()},
            "evidence": evidence,
            "layers": layers,
            # Reading and Gram products are timed by the digests; what remains is alignment and CKA.
            "timings": {"read_s": round(read_s, 3), "gram_s": round(gram_s, 3), **alignment.timings,
                        "cka_s": round(self.cka_seconds, 3)},
        }


def _digest_work(*digests):
    return sum(d.read_seconds for d in digests), sum(d.compute_seconds for d in digests)


def compare(digest_a, digest_b, device, progress=True, residual="auto", null=report.PAPER_NULL):
    """Full AWM comparison of two digests; returns a plain dict (see README, JSON schema).

    residual: "auto" computes the residual scores when the verdict needs them (a second pass
    over the layers), "always" in the same pass as the plain ones.
    """
    pair = PairScoring(digest_a, digest_b, device)
    with allocator.reusing_freed_memory():
        pair.pass_over_layers(pair.groups(residual), progress)
        if residual == "auto" and pair.needs_residual(null):
            pair.pass_over_layers((RESIDUAL,), progress)
    return pair.result(_digest_work(digest_a, digest_b))


def compare_many(shared, openers, device, null=report.PAPER_NULL, progress=False, residual="auto"):
    """compare(shared, other) for every digest that an opener returns, with the shared
    digest's layers read once for all equal-depth pairs: layer i of every pair is scored
    before layer i + 1 is read. The others are opened one at a time and keep only what the
    layer pass needs after their alignment, so memory does not grow with their number.

    Returns one JSON-ready report per opener (as compare_digests), or the AwmError that pair
    met (the others go on).
    """
    outcomes, pairs = [None] * len(openers), {}
    for number, opener in enumerate(tqdm(openers, desc="alignments", unit="model", leave=False, disable=None if progress else True)):
        try:
            other = opener()
            pairs[number] = PairScoring(shared, other, device)
            other.release_embedding()
        except AwmError as err:
            outcomes[number] = err
    with allocator.reusing_freed_memory():
        _layer_passes(shared, pairs, outcomes, lambda pair: pair.groups(residual), progress)
        if residual == "auto":
            needing = {n: p for n, p in pairs.items() if outcomes[n] is None and p.needs_residual(null)}
            _layer_passes(shared, needing, outcomes, lambda pair: (RESIDUAL,), progress)
    # The shared digest's reading is split evenly over the pairs that used it.
    scored = [n for n in pairs if outcomes[n] is None]
    shared_work = [seconds / max(1, len(scored)) for seconds in _digest_work(shared)]
    for number in scored:
        pair = pairs[number]
        result = pair.result([own + part for own, part in zip(_digest_work(pair.digest_b), shared_work)])
        outcomes[number] = pair_record(result, shared, pair.digest_b, device, null)
    return outcomes


def _layer_passes(shared, pairs, outcomes, groups_of, progress):
    """Fill the similarities of {number: PairScoring}: equal-depth pairs in one pass over the
    shared digest's layers, the others each in a pass of its own."""
    equal = {n: p for n, p in pairs.items() if p.same_depth}
    bar = dict(disable=None if progress else True, leave=False, unit="layer")
    for i in tqdm(range(shared.num_layers) if equal else (), desc=f"layers ({len(equal)} models)", **bar):
        going = [(n, p) for n, p in equal.items() if outcomes[n] is None]
        if not going:
            break                       # every pair has failed: the shared layers are not needed
        kernels = shared.layer(i)
        for number, pair in going:
            try:
                pair.add_layer(i, kernels, pair.digest_b.layer(i), groups_of(pair))
            except AwmError as err:
                outcomes[number] = err
    for number, pair in pairs.items():
        if number not in equal:
            try:
                pair.pass_over_layers(groups_of(pair), progress)
            except AwmError as err:
                outcomes[number] = err


def _correspondence_record(test):
    if test is None:
        return None
    return {"matched_dims": test.matched_dims, "target_dims": test.target_dims,
            "fraction": round(test.fraction, 4), "p_value": float(f"{test.p_value:.3g}"),
            "threshold_sigmas": round(test.threshold_sigmas, 2),
            "median_matched_sigmas": round(test.median_matched_sigmas, 2)}


def _finite(value):
    return float(value) if value is not None and np.isfinite(value) else None


def digest_path(path, device, keep_layers=False, with_circuit=True, progress=False, vocab_match="bytes", precision="exact"):
    from readers import open_model

    return ModelDigest(open_model(path, vocab_match, progress), device, keep_layers, with_circuit, progress, precision)


def compare_digests(digest_a, digest_b, device, null, progress=True, residual="auto"):
    """Compare two digests and assemble the JSON-ready report (scores in percent)."""
    return pair_record(compare(digest_a, digest_b, device, progress, residual, null), digest_a, digest_b, device, null)


def pair_record(result, digest_a, digest_b, device, null):
    """The JSON-ready report of compare()'s result (rounded to percent in place)."""
    result = report.to_percent(result)
    timings = {**result["timings"], "device": str(device), "precision": digest_a.precision}
    return report.pair_report(result, digest_a.meta, digest_b.meta, null, timings)
