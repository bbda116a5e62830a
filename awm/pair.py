"""Compare two models, the method's five steps from top to bottom:

1. the shared vocabulary and 2. the hidden-dimension alignment (awm.alignment), on the models'
digests (awm.digest); 3. the alignment applied to the base's W_q / W_k kernels and 4. unbiased
CKA per matched layer pair (awm.layer_scores); 5. the scores as means over layers, then the
verdict (awm.verdict) and the JSON record (awm.report).
"""
import time

import numpy as np

from awm import allocator, report
from awm import verdict as rule
from awm.alignment import align
from awm.errors import ComparisonError
from awm.layer_scores import (
    GROUP_ROWS,
    METRICS,
    PLAIN,
    RESIDUAL,
    layer_similarities,
    layer_values,
    score_layers,
)


def needs_residual(alignment, scores, null):
    """The verdict reads the residual scores only when the embeddings show no correspondence
    and a plain score is above the reference: only then are they worth a second CKA pass."""
    test = alignment.correspondence
    above = any(rule.above_reference(None if v is None or not np.isfinite(v) else 100.0 * v, null)
                for v in (scores["final"], scores["qk_circuit"]))
    return test is not None and test.p_value > rule.CORRESPONDENCE_P and above


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
        values = layer_values(base, target, self.alignment, groups)
        for group in groups:
            rows = GROUP_ROWS[group]
            self.sims[rows, index, index] = values[rows]
        self.cka_seconds += time.perf_counter() - started

    def pass_over_layers(self, groups, progress):
        """This pair's own pass over both models' layers, timed without the digests' reading
        and products."""
        work = lambda: sum(digest_work(self.digest_a, self.digest_b))
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


def digest_work(*digests):
    return sum(d.read_seconds for d in digests), sum(d.compute_seconds for d in digests)


def compare(digest_a, digest_b, device, progress=True, residual="auto", null=rule.PAPER_NULL):
    """Full AWM comparison of two digests; returns a plain dict (docs/output.md).

    residual: "auto" computes the residual scores when the verdict needs them (a second pass
    over the layers), "always" in the same pass as the plain ones.
    """
    pair = PairScoring(digest_a, digest_b, device)
    with allocator.reusing_freed_memory():
        pair.pass_over_layers(pair.groups(residual), progress)
        if residual == "auto" and pair.needs_residual(null):
            pair.pass_over_layers((RESIDUAL,), progress)
    return pair.result(digest_work(digest_a, digest_b))


def _correspondence_record(test):
    if test is None:
        return None
    return {"matched_dims": test.matched_dims, "target_dims": test.target_dims,
            "fraction": round(test.fraction, 4), "p_value": float(f"{test.p_value:.3g}"),
            "threshold_sigmas": round(test.threshold_sigmas, 2),
            "median_matched_sigmas": round(test.median_matched_sigmas, 2)}


def _finite(value):
    return float(value) if value is not None and np.isfinite(value) else None


def compare_digests(digest_a, digest_b, device, null, progress=True, residual="auto"):
    """Compare two digests and assemble the JSON-ready report (scores in percent)."""
    return pair_record(compare(digest_a, digest_b, device, progress, residual, null), digest_a, digest_b, device, null)


def pair_record(result, digest_a, digest_b, device, null):
    """The JSON-ready report of compare()'s result (rounded to percent in place)."""
    result = report.to_percent(result)
    timings = {**result["timings"], "device": str(device), "precision": digest_a.precision}
    return report.pair_report(result, digest_a.meta, digest_b.meta, null, timings)
