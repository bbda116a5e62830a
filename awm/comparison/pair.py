"""Compare two models, the method's five steps from top to bottom:

1. the shared vocabulary and 2. the hidden-dimension alignment (awm.comparison.alignment), on the models'
digests (awm.comparison.digest); 3. the alignment applied to the base's W_q / W_k kernels and 4. unbiased
CKA per matched layer pair (awm.method.layer_scores); 5. the scores as means over layers, then the
verdict (awm.witnesses.verdict) and the JSON record (awm.comparison.report).
"""
import time

import numpy as np
import torch

from awm import allocator
from awm.comparison import report
from awm.comparison.alignment import Alignment, align, rotation_alignment
from awm.errors import ComparisonError
from awm.method.layer_scores import (
    ALIGNED,
    GROUP_ROWS,
    METRICS,
    PLAIN,
    RESIDUAL,
    layer_similarities,
    layer_values,
    score_layers,
)
from awm.witnesses import body_alignment as body
from awm.witnesses import body_rows, circuit_spectra
from awm.witnesses import verdict as rule
from awm.witnesses.verdict import BODY_PERMUTATION


def _above(scores, null):
    return any(rule.above_reference(None if v is None or not np.isfinite(v) else 100.0 * v, null)
               for v in (scores["final"], scores["qk_circuit"]))


def needs_residual(alignment, scores, null):
    """The verdict reads the residual scores only when no alignment has a basis and a plain
    score is above the reference: only then are they worth a second CKA pass."""
    return alignment.testable and not alignment.passed and _above(scores, null)


class PairScoring:
    """One comparison under way: which model is the base, the alignments, and the per-layer
    similarities as passes over the layers fill them.

    The paper's scores always rest on the embedding's permutation (or the stored order without
    shared tokens). When that alignment fails its test, or passes it below copy level, the
    embedding is asked once more, for a rotation; when neither passes, the body, whose per-dim
    profiles are gathered during the first pass. Of the embedding witnesses that pass, the one
    with the strongest evidence is the alignment the verdict rests on (`witness`, with the
    scores under it: the aligned group): a block rotation leaves dims half in place, so the
    permutation passes weakly where the rotation is confirmed at copy level.
    """

    def __init__(self, digest_a, digest_b, device):
        if digest_a.precision != digest_b.precision:
            raise ComparisonError(f"digests of different precision ({digest_a.precision} vs {digest_b.precision})")
        self.digest_a, self.digest_b, self.device = digest_a, digest_b, device
        self.a_is_base = digest_a.hidden_size >= digest_b.hidden_size
        self.base, self.target = (digest_a, digest_b) if self.a_is_base else (digest_b, digest_a)
        self.alignment = align(self.base, self.target, device)
        self.tried = [self.alignment] if self.alignment.testable else []
        # The paper's alignment first; the rotation only when it fails or passes below copy
        # level (a pass at copy level costs nothing more). Both scored in the first pass when
        # both pass: keep_the_strongest picks after it.
        self.rotation = None
        if self.alignment.testable and not (self.alignment.passed and _copy_level(self.alignment)):
            rotation = rotation_alignment(self.base, self.target, self.alignment, device)
            self.tried.append(rotation)
            self.rotation = rotation if rotation.passed else None
        self.witness = self.alignment if self.alignment.passed else self.rotation
        self.body_match = None
        self.spectra_match = None       # the circuit spectra, when no witness pairs the dims (awm.witnesses.circuit_spectra)
        self.body_weights = None        # the row test, when the verdict would rest on an embedding witness
        self.rows_seconds = None
        self.sims = np.full((len(METRICS), self.base.num_layers, self.target.num_layers), np.nan)
        self.cka_seconds = 0.0

    @property
    def same_depth(self):
        return self.digest_a.num_layers == self.digest_b.num_layers

    @property
    def asks_the_body(self):
        """No embedding witness passed: the first pass gathers the body's per-dim profiles."""
        return self.witness is None

    def alignments(self):
        aligned = self.witness if self.witness is not self.alignment else self.rotation
        return {PLAIN: self.alignment if self.alignment.usable else None, ALIGNED: aligned}

    def groups(self, residual):
        """The first pass's metric groups."""
        groups = [PLAIN]
        if residual == "always" and self.alignment.base_common is not None:
            groups.append(RESIDUAL)
        if self.alignments()[ALIGNED] is not None:
            groups.append(ALIGNED)
        return tuple(groups)

    def observe(self, digest, index, kernels):
        if self.asks_the_body:
            body.keep_profile(digest, index, kernels)
            circuit_spectra.keep_spectrum(digest, index, kernels)

    def add_layer(self, index, kernels_a, kernels_b, groups):
        """Equal depth: the similarities of layer `index` of both models, for these groups."""
        started = time.perf_counter()
        self.observe(self.digest_a, index, kernels_a)
        self.observe(self.digest_b, index, kernels_b)
        base, target = (kernels_a, kernels_b) if self.a_is_base else (kernels_b, kernels_a)
        values = layer_values(base, target, self.alignments(), groups)
        for group in groups:
            rows = GROUP_ROWS[group]
            self.sims[rows, index, index] = values[rows]
        self.cka_seconds += time.perf_counter() - started

    def pass_over_layers(self, groups, progress):
        """This pair's own pass over both models' layers, timed without the digests' reading
        and products."""
        work = lambda: sum(digest_work(self.digest_a, self.digest_b))
        started, work_before = time.perf_counter(), work()
        sims = layer_similarities(self.base, self.target, self.alignments(), progress, groups, self.observe)
        for group in groups:
            self.sims[GROUP_ROWS[group]] = sims[GROUP_ROWS[group]]
        self.cka_seconds += time.perf_counter() - started - (work() - work_before)

    def settle(self, null, progress):
        """After the first pass: the strongest embedding witness, else the body's; then the
        body's weights when the verdict would rest on the embedding."""
        self.keep_the_strongest(null)
        self.ask_the_body(progress)
        self.check_the_body_weights(null)

    def keep_the_strongest(self, null):
        """Both embedding witnesses passed (the permutation below copy level): the verdict rests
        on the one with the stronger evidence (strongest_witness), read off the first pass."""
        if self.rotation is None or not self.alignment.passed:
            return
        scores = score_layers(self.sims)
        self.witness = strongest_witness([(self.alignment, scores[0]), (self.rotation, scores[2])], null)

    def ask_the_body(self, progress):
        """After the first pass: pair the dims from the body's profiles and test the pairing on
        held-out layers; when it holds, read the signs off a few layers and score under it (a
        second pass)."""
        if not self.asks_the_body:
            return
        self.body_match = body.match_dims(body.profiles(self.target), body.profiles(self.base))
        if self.body_match is None or not rule.witness_passes(BODY_PERMUTATION, self.body_match.test):
            self.spectra_match = circuit_spectra.match(circuit_spectra.spectra(self.base), circuit_spectra.spectra(self.target))
            return
        self.witness = body_alignment(self.base, self.target, self.body_match, self.alignment.shared_tokens)
        self.tried.append(self.witness)
        self.pass_over_layers((ALIGNED,), progress)

    def check_the_body_weights(self, null):
        """When the verdict would call the pair derived on an embedding witness, test whether the
        body's weights themselves were inherited (awm.witnesses.body_rows): a fresh body trained on an
        inherited embedding resembles the donor's in its Grams, not in its rows."""
        if self.witness is None or self.witness.basis == BODY_PERMUTATION:
            return
        scores = score_layers(self.sims)[0 if self.witness is self.alignment else 2]
        if _above(scores, rule.null_for(self.witness.basis, null)):
            started = time.perf_counter()
            test = body_rows.rows_test(self.base, self.target, self.witness)
            if test is not None:
                self.body_weights = (test, body_rows.expected_sigmas(scores["final"], self.target.hidden_size))
            self.rows_seconds = time.perf_counter() - started

    def needs_residual(self, null):
        return self.witness is None and needs_residual(self.alignment, score_layers(self.sims)[0], null)

    def witness_records(self):
        """Every witness asked, in order, with its test: the report's evidence.alignment.witnesses."""
        records = [{"witness": a.basis, "confirmed": a.passed, **_correspondence_record(a.correspondence)} for a in self.tried]
        if self.asks_the_body:
            if self.body_match is None:
                records.append({"witness": BODY_PERMUTATION, "confirmed": False, "note": "too few layers to hold any out"})
            else:
                records.append({"witness": BODY_PERMUTATION, "confirmed": False, **_correspondence_record(self.body_match.test)})
        return records

    def result(self, work):
        """The pair's plain result dict (see compare); work: the digests' (read_s, gram_s) it counts."""
        alignment, sims, digest_a, digest_b = self.alignment, self.sims, self.digest_a, self.digest_b
        scores, residual_scores, aligned_scores, paper_map, circuit_map = score_layers(sims)
        if self.witness is self.alignment:
            aligned_scores = scores
        # Report layers as (layer of A, layer of B) whatever side was the base.
        orient = (lambda i, j: [i, j]) if self.a_is_base else (lambda i, j: [j, i])
        layers = [dict(zip(("layer_a", "layer_b"), orient(i, j)), **{m: _finite(sims[n][i, j]) for n, m in enumerate(METRICS[:3])})
                  for i, j in paper_map]
        evidence = {
            "base_model": "a" if self.a_is_base else "b",
            "shared_tokens": alignment.shared_tokens,
            "aligned": alignment.aligned,
            "matched_hidden_dims": int(len(alignment.base_index)) if alignment.usable else 0,
            "base_hidden_dims": self.base.hidden_size,
            "sign_flips": int((alignment.sign < 0).sum()) if alignment.usable else 0,
            "mean_abs_cosine": _finite(alignment.mean_abs_cosine),
            "correspondence": _correspondence_record(alignment.correspondence),
            "alignment": {"basis": self.witness.basis if self.witness else None, "witnesses": self.witness_records(),
                          "stored_order": _in_stored_order(self.witness),
                          "identity_fraction": _identity_fraction(self.witness)},
            "body_weights": _body_weights_record(self.body_weights, self.base, self.target, self.a_is_base),
            "circuit_spectra": self.spectra_match.record() if self.spectra_match else None,
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
            "aligned_scores": {name: _finite(value) for name, value in aligned_scores.items()} if self.witness else None,
            "evidence": evidence,
            "layers": layers,
            # Reading and Gram products are timed by the digests; what remains is alignment and CKA.
            "timings": {"read_s": round(read_s, 3), "gram_s": round(gram_s, 3), **alignment.timings,
                        **{k: v for a in self.tried[1:] for k, v in (a.timings or {}).items()}, "cka_s": round(self.cka_seconds, 3),
                        **({"rows_s": round(self.rows_seconds, 3)} if self.rows_seconds is not None else {})},
        }


def _copy_level(alignment):
    return not alignment.correspondence.agreement < rule.COPY_AGREEMENT      # NaN (not measured): as before, a pass


def strongest_witness(passed, null):
    """Of [(alignment, its scores as fractions)] whose witnesses passed, the one with the
    strongest evidence of derivation: scores above the null of its alignment first, then the
    larger held-out agreement (both embedding witnesses measure the same thing: how well each
    target dim is predicted by its partner on held-out tokens)."""
    return max(passed, key=lambda found: (_above(found[1], rule.null_for(found[0].basis, null)),
                                          found[0].correspondence.agreement))[0]


def body_alignment(base, target, match, shared_tokens):
    """The body's pairing as an Alignment: the signs read off a few layers' kernels."""
    started = time.perf_counter()
    agreement = body.SignAgreement(match.base_index)
    for base_layer, target_layer in body.sign_layers(base.num_layers, target.num_layers):
        agreement.add(target.layer(target_layer), base.layer(base_layer))
    return Alignment(match.base_index, agreement.signs(), shared_tokens, True, float("nan"),
                     timings={"body_s": round(time.perf_counter() - started, 3)}, correspondence=match.test, basis=BODY_PERMUTATION)


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
        pair.settle(null, progress)
        if residual == "auto" and pair.needs_residual(null):
            pair.pass_over_layers((RESIDUAL,), progress)
    return pair.result(digest_work(digest_a, digest_b))


def _correspondence_record(test):
    if test is None:
        return None
    return {"matched_dims": test.matched_dims, "target_dims": test.target_dims,
            "fraction": round(test.fraction, 4), "p_value": float(f"{test.p_value:.3g}"),
            "threshold_sigmas": round(test.threshold_sigmas, 2),
            "median_matched_sigmas": round(test.median_matched_sigmas, 2), "agreement": round(test.agreement, 4)}


def _in_stored_order(alignment):
    """The alignment maps every dim to the same dim with sign +1: the models share their basis."""
    if alignment is None or alignment.base_index is None:
        return False
    index = alignment.base_index
    return bool(torch.equal(index, torch.arange(len(index))) and (alignment.sign > 0).all())


def _identity_fraction(alignment):
    """The share of dims the alignment maps to the same dim with sign +1 (None without one): near
    1, the models share their basis up to a few dims the assignment swapped."""
    if alignment is None or alignment.base_index is None or not len(alignment.base_index):
        return None
    index = alignment.base_index
    same = (index == torch.arange(len(index), device=index.device)) & (alignment.sign.to(index.device) > 0)
    return round(float(same.float().mean()), 4)


def _body_weights_record(outcome, base, target, a_is_base):
    if outcome is None:
        return None
    test, expected = outcome
    confirmed = test.p_value <= rule.CORRESPONDENCE_P
    pairs = zip(body_rows.row_layers(base.num_layers), body_rows.row_layers(target.num_layers))
    return {"confirmed": confirmed, "matched_rows": test.matched_dims, "rows": test.target_dims,
            "fraction": round(test.fraction, 4), "p_value": float(f"{test.p_value:.3g}"),
            "median_matched_sigmas": round(test.median_matched_sigmas, 2), "expected_sigmas": round(expected, 2),
            "decisive": confirmed or expected >= test.threshold_sigmas + body_rows.POWER_MARGIN_SIGMAS,
            "layers": [[b, t] if a_is_base else [t, b] for b, t in pairs]}


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
