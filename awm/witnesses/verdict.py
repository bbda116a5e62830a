"""The verdict: the reference of independent pairs, the thresholds, the words and the rule.

Everything that decides or names a verdict is here; the rest of awm imports it.
"""
import json
import math
import os

from awm.errors import CheckpointError

# The paper's reference for independent models: 90 pairs of independently pre-trained 7B and
# 13B base models scored 0.375 % on average with a standard deviation of about 0.28 % (the
# official implementation hard-codes mean 0.00375, std 0.0028 for its Z-score).
PAPER_NULL = {
    "name": "paper",
    "mean": 0.375,
    "std": 0.28,
    "source": "AWM (ICLR 2026): 90 independent 7B/13B base-model pairs",
}
# Decision rule (ours, not the paper's): a score this many standard deviations above the
# independent-pair mean is called derived. 6 sigma is ~2.06 % with the paper's reference,
# below the paper's hardest positive (Llama-3.2-1B vs Llama-3.1-8B, ~3.8 %).
DERIVED_Z = 6.0
# A QK-circuit score this many points above the AWM score is worth pointing out: function-
# preserving reparametrizations lower the paper's score and leave the circuit's alone.
DISGUISE_GAP = 25.0


def z_score(score_percent, null):
    if score_percent is None:
        return None
    return abs(score_percent - null["mean"]) / null["std"]


# The embedding-correspondence test must reach this p-value before a score can count as
# evidence of derivation: below it, the LAP alignment the scores rest on may pair dims that
# only share a common direction (docs/method.md, the verdict).
CORRESPONDENCE_P = 1e-3


def above_reference(value, null):
    """A score (percent) at least DERIVED_Z standard deviations above independent pairs."""
    return value is not None and value - null["mean"] >= DERIVED_Z * null["std"]


def _dims(test):
    agreement = f", held-out agreement {test['agreement']:.2f}" if test.get("agreement") is not None else ""
    return f"{test['matched_dims']} of {test['target_dims']} dims, p <= {test['p_value']:.2g}{agreement}"


# The witnesses an alignment can rest on (awm.comparison.alignment names them the same).
EMBEDDING_PERMUTATION, EMBEDDING_ROTATION, BODY_PERMUTATION = "embedding permutation", "embedding rotation", "body permutation"
EMBEDDING_WITNESSES = (EMBEDDING_PERMUTATION, EMBEDDING_ROTATION)
CIRCUIT_SPECTRA = "circuit spectra"        # no alignment: the evidence of awm.witnesses.circuit_spectra

# Significance is not enough: well-trained embeddings of unrelated models are approximately
# linearly related over their shared tokens, and with tens of thousands of tokens every dim of a
# fitted map passes a significance test. A witness passes only when its held-out agreement (the
# median over target dims of a dim's agreement with its partner, CorrespondenceTest.agreement)
# is as large as inheritance leaves it. Set between real independent and real derived pairs
# (asset/calibration_real.json, docs/method.md):
#   embedding permutation: 20 real independent pairs <= 0.08, 10 real derived >= 0.97; the paper's
#     null was measured under this alignment, so the bar only keeps chance pairings out, low
#     enough for a pruned and distilled child whose dims pair up only in part.
#   embedding rotation: real independent pairs up to 0.54 (a fitted map always finds the linear
#     relation), real derived (rotated, sliced, fine-tuned, pruned) >= 0.96.
#   body permutation: real independent <= 0.07, real derived bodies >= 0.96.
MIN_AGREEMENT = {EMBEDDING_PERMUTATION: 0.25, EMBEDDING_ROTATION: 0.8, BODY_PERMUTATION: 0.35}
# "Shared" (inherited) needs copy-level evidence: an embedding witness at this agreement.
COPY_AGREEMENT = 0.8


def witness_passes(witness, test):
    """The witness's held-out test is significant and its agreement as large as inheritance leaves it."""
    return (test is not None and test.p_value <= CORRESPONDENCE_P
            and not test.agreement < MIN_AGREEMENT.get(witness, 0.0))      # NaN (no effect size measured): significance decides


# Z of the scores under an alignment uses the null of that alignment. The paper's null was
# measured under the embedding's permutation; a fitted rotation or the body's pairing lifts the
# scores of unrelated pairs above it, so each has a null measured on real independent pairs with
# that alignment forced (benchmarks/calibrate_verdict.py --real).
MEASURED_NULLS = {
    EMBEDDING_ROTATION: {"name": "measured (embedding rotation)", "mean": 1.558, "std": 0.950,
                         "source": "12 real independent pairs (SmolLM2, Gemma-3-270m, Qwen2.5-Coder-0.5B/1.5B and children) "
                                   "scored under a fitted embedding rotation (asset/calibration_real.json)"},
    BODY_PERMUTATION: {"name": "measured (body permutation)", "mean": 1.375, "std": 0.649,
                       "source": "12 real independent pairs (SmolLM2, Gemma-3-270m, Qwen2.5-Coder-0.5B/1.5B and children) "
                                 "scored under the body's pairing (asset/calibration_real.json)"},
}


def null_for(basis, null):
    """The reference for scores under `basis`: the caller's (the paper's by default) for the
    embedding's permutation or the stored order, the measured one for the other witnesses."""
    return MEASURED_NULLS.get(basis, null)
WHAT_IT_SHOWS = {
    EMBEDDING_PERMUTATION: "the embedding dimensions correspond one to one ({dims})",
    EMBEDDING_ROTATION: ("the embeddings are related by a rotation of the hidden space, not by a pairing of dims "
                         "({dims} in the rotated coordinates, on held-out tokens), as rotation-based quantization leaves them"),
    BODY_PERMUTATION: ("the transformer bodies' hidden dims correspond one to one ({dims}, found on some layers and "
                       "confirmed on the others) though the embeddings do not: the embedding was redrawn or replaced"),
}


def _legacy_alignment(correspondence):
    """Records without the alignment evidence: the embedding permutation was the only witness."""
    if correspondence is None:
        return {"basis": None, "witnesses": []}
    witness = {"witness": EMBEDDING_PERMUTATION, "confirmed": correspondence["p_value"] <= CORRESPONDENCE_P, **correspondence}
    return {"basis": EMBEDDING_PERMUTATION if witness["confirmed"] else None, "witnesses": [witness]}


def verdict(scores, residual, correspondence, null, alignment=None, aligned=None, body_weights=None, circuit_spectra=None,
            depths=None):
    """derived / derived (disguised) / inconclusive / no evidence of derivation / independent /
    undefined, with a plain reason.

    A score counts only when the alignment under it is real: one of the witnesses (the
    embedding's permutation, the embedding's rotation, the body's permutation) must pass its
    held-out test, and the verdict reads the scores under that witness's alignment. Without
    any, a high score is what anisotropic embeddings give any pair, and the residual scores
    decide. When the alignment comes from the embedding, the body's own weight rows must be
    recognisable too (body_weights), or only the embedding was inherited.
    When no witness pairs the dims, the QK circuits' spectra (which no change of residual basis
    moves) can still show a copy: a rotated body under a new embedding.
    When no witness found anything, "independent" needs every derivation the pair's shapes
    allow to have been looked for by a witness able to see it (unseen); otherwise the verdict
    is "no evidence of derivation", naming what no witness that ran could see.
    alignment, body_weights, circuit_spectra: the record's evidence fields; aligned: its
    aligned_scores; depths: (layers of A, layers of B), None when the record does not say.
    """
    alignment = alignment or _legacy_alignment(correspondence)
    basis = alignment["basis"]
    if basis is None and circuit_spectra and circuit_spectra["confirmed"]:
        return "derived", _spectra_reason(alignment["witnesses"], circuit_spectra)
    final, circuit = scores.get("final"), scores.get("qk_circuit")
    if basis is not None and basis != EMBEDDING_PERMUTATION:
        final, circuit = (aligned or {}).get("final"), (aligned or {}).get("qk_circuit")
    if final is None:
        if basis is None and circuit is None and any("p_value" in w for w in alignment["witnesses"]):
            return "inconclusive", (f"{_none_of(alignment['witnesses'])}, and without an alignment the scores are undefined "
                                    "(no shared tokens and different widths)")
        return "undefined", "the AWM score is undefined for these weights"
    if basis is not None:
        null = null_for(basis, null)
        shared = WHAT_IT_SHOWS[basis].format(dims=_dims(_confirmed(alignment)))
        call, reason = _aligned_verdict(basis, shared, final, circuit, null, scores.get("final"))
        if call == "inconclusive" and basis in EMBEDDING_WITNESSES and not copy_level(_confirmed(alignment)):
            reason = (f"{shared}: related beyond chance but not copies, and neither score rises above independent pairs: "
                      "related, but nothing shows the body inherited")
        if is_derived(call) and body_weights is not None and not body_weights["confirmed"] and body_weights["decisive"]:
            return _embedding_only_verdict(shared, reason, body_weights, final, circuit, null)
        return call, reason
    if not alignment["witnesses"]:
        return _unaligned_verdict(final, circuit, null)
    call, reason = _no_correspondence_verdict(alignment["witnesses"], final, circuit, residual, null)
    missed = unseen(alignment, circuit_spectra, depths)
    if call == "independent" and missed:
        return NO_EVIDENCE, f"{reason}: no evidence of derivation found, but {_not_looked_for(missed)}"
    return call, reason


def _confirmed(alignment):
    return next(w for w in alignment["witnesses"] if w["witness"] == alignment["basis"])


def _aligned_verdict(basis, shared, final, circuit, null, paper_final):
    under = "" if basis == EMBEDDING_PERMUTATION else " under that alignment"
    if above_reference(final, null):
        reason = (f"{shared} and{under} the AWM score {final:.2f} % is {z_score(final, null):.0f} sigma above independent pairs"
                  f"{'' if under == '' else ' scored the same way (' + null['name'] + ' null)'}")
        if basis != EMBEDDING_PERMUTATION and paper_final is not None:
            reason += f" (the paper's score, on the embedding's pairing: {paper_final:.2f} %)"
        if circuit is not None and circuit - final >= DISGUISE_GAP:
            reason += f"; the QK-circuit score ({circuit:.1f} %) is far higher, as after a reparametrizing disguise"
        return "derived", reason
    if above_reference(circuit, null):
        return "derived (disguised)", (f"{shared}; the stored attention weights look unrelated but what attention "
                                       "computes matches: the weights were reparametrized")
    return "inconclusive", (f"{shared}, but neither score rises above independent pairs{under}: only the embedding "
                            "was inherited, or the attention weights were retrained beyond what the scores can see")


# The closest real independent pair the circuit spectra were measured on, and how many there were
# (asset/calibration_real.json: one pair of equal depth; asset/blind_spots.json: SmolLM2 and its
# children against Gemma-3-270m and Qwen2.5-Coder-1.5B, matched in order at another depth).
# Quoted in the reason, not used by the rule (its bar: circuit_spectra.COPY_DISTANCE).
SPECTRA_INDEPENDENT = {"distance": 0.13914, "pairs": 11}


def _spectra_reason(witnesses, spectra):
    measured = SPECTRA_INDEPENDENT
    depths = spectra.get("depths")
    matched = (f"over {spectra['layers']} layers" if not depths else
               f"over the {depths[0]} layers of the shallower model, each matched in order to one of the other's {depths[1]}")
    kept = ("the transformer body was kept under another residual basis (a rotation) and a new embedding" if not depths else
            "the transformer body's layers were kept (some dropped, or copies stacked) under a new embedding or residual basis")
    return (f"{_none_of(witnesses)}, but every layer's QK circuit has the other model's singular values (mean log difference "
            f"{spectra['distance']:.4f} {matched}, {spectra['contrast']:.3f} of the difference with the layers "
            f"out of order; the real independent pair{'s' if measured['pairs'] != 1 else ''} measured "
            f"({measured['pairs']}) differ{'' if measured['pairs'] != 1 else 's'} by {measured['distance']:.2f} or more): {kept}")


def _none_of(witnesses):
    asked = ", ".join(_why_not(w) for w in witnesses if "p_value" in w)
    return f"no witness shows a correspondence of the hidden dims ({asked})"


def _why_not(witness):
    """A failed witness in words: not significant, or significant but far below what inheritance leaves."""
    name, agreement = witness["witness"], witness.get("agreement")
    if witness["p_value"] <= CORRESPONDENCE_P and agreement is not None and agreement < MIN_AGREEMENT.get(name, 0.0):
        related = "related embeddings, not inherited" if name in EMBEDDING_WITNESSES else "related, not inherited"
        return f"{name}: agreement {agreement:.2f} on held-out data, inheritance leaves >= {MIN_AGREEMENT[name]:.2f}: {related}"
    return f"{name} p = {witness['p_value']:.2g}"


def _embedding_only_verdict(shared, reason, body_weights, final, circuit, null):
    """The embedding's dims correspond and the scores are high, but no weight row of the body
    is the donor's: a body trained afresh on an inherited embedding, or a disguise that mixed
    every head's rows (which leaves the QK circuit, not the Grams)."""
    rows = f"{body_weights['matched_rows']} of {body_weights['rows']} W_q / W_k rows recognisable, p = {body_weights['p_value']:.2g}"
    if above_reference(circuit, null) and final is not None and circuit - final >= DISGUISE_GAP:
        return "derived (disguised)", (f"{reason}; the body's weight rows are not recognisable ({rows}) but what attention "
                                       "computes matches: each head's weights were reparametrized")
    return "inconclusive", (f"{shared}, but the transformer body's weights are not the other model's "
                            f"({rows}): its similarity (AWM {final:.2f} %) is what a body trained afresh on this embedding "
                            "learns. Only the embedding was inherited")


def _no_correspondence_verdict(witnesses, final, circuit, residual, null):
    none = _none_of(witnesses)
    if not (above_reference(final, null) or above_reference(circuit, null)):
        return "independent", f"{none}, and both scores lie within the range of independently trained models"
    if not (above_reference(residual.get("final"), null) or above_reference(residual.get("qk_circuit"), null)):
        return "independent", (f"{none}; the AWM score of {final:.2f} % comes from directions that all embedding "
                               f"columns share (without them: {_fmt_plain(residual.get('final'))} %), not from inherited weights")
    return "inconclusive", (f"{none}, yet the scores stay above independent pairs without the shared directions "
                            f"(AWM {_fmt_plain(residual.get('final'))} %, QK circuit {_fmt_plain(residual.get('qk_circuit'))} %): "
                            "related training, not evidence of derivation")


# ----------------------------------------------------------------------------- what the witnesses could see
# The derivations the verdict can call derived keep the transformer body; a copier chooses what
# else to change. Each is seen by the witnesses named, and only at the depths named (measured on
# real pairs, asset/calibration_real.json; docs/method.md):
KEPT_EMBEDDING = "a kept embedding (its dims permuted, or the residual stream rotated)"
PERMUTED_BODY = "a body of equal depth under a new embedding, its dims permuted"
ROTATED_BODY = "a body of equal depth under a new embedding and a rotated residual stream"
OTHER_DEPTH_BODY = "a body of another depth under a new embedding (layers dropped or added, an every-other-layer student)"
SEEN_BY = {
    # The rotation fits any pairing too; the permutation alone cannot see a rotated stream.
    KEPT_EMBEDDING: (EMBEDDING_ROTATION,),
    # The body's pairing compares profiles layer for layer: depth-pruned children of SmolLM2 and
    # Qwen2.5-Coder-0.5B agree at 0.11 and 0.095, under its bar, though their bodies were kept.
    PERMUTED_BODY: (BODY_PERMUTATION,),
    ROTATED_BODY: (CIRCUIT_SPECTRA,),
    # The spectra at another depth match each layer of the shallower model with its own layer of
    # the deeper one, in order: dropped, alternate and stacked layers keep their spectra.
    OTHER_DEPTH_BODY: (CIRCUIT_SPECTRA,),
}
NOT_RUN = {
    KEPT_EMBEDDING: "the embedding's witnesses need 64 shared tokens",
    PERMUTED_BODY: "the body's witness needs two layers to hold one out",
    ROTATED_BODY: "the circuit spectra were not compared",
    OTHER_DEPTH_BODY: "the circuit spectra were not compared",
}


def _derivations(depths):
    """The derivations two models of these depths can be related by (all, depths unknown)."""
    if depths is None or None in depths:
        return tuple(SEEN_BY)
    if depths[0] == depths[1]:
        return KEPT_EMBEDDING, PERMUTED_BODY, ROTATED_BODY
    return KEPT_EMBEDDING, OTHER_DEPTH_BODY


def witnesses_run(alignment, circuit_spectra=None):
    """The witnesses whose test ran on the pair (passed or not)."""
    ran = {w["witness"] for w in alignment["witnesses"] if "p_value" in w}
    return ran | ({CIRCUIT_SPECTRA} if circuit_spectra is not None else set())


def unseen(alignment, circuit_spectra=None, depths=None):
    """The derivations the pair's depths allow that no witness which ran could see."""
    ran = witnesses_run(alignment, circuit_spectra)
    return [kind for kind in _derivations(depths) if not ran.intersection(SEEN_BY[kind])]


def _not_looked_for(missed):
    why = "; ".join(f"{kind}: {NOT_RUN[kind]}" for kind in missed)
    return f"no witness that ran could see {'it' if len(missed) == 1 else 'these'} ({why})"


SHARED, NOT_SHARED, UNKNOWN = "shared", "not shared", "unknown"


def copy_level(witness):
    """A confirmed embedding witness whose held-out agreement is what a copy leaves: the only
    evidence that lets the report say the embedding was shared. A record without the agreement
    (written before it was measured) counts as confirmed."""
    agreement = witness.get("agreement")
    return witness["confirmed"] and (agreement is None or agreement >= COPY_AGREEMENT)


def inheritance(call, alignment, body_weights=None, circuit_spectra=None, depths=None):
    """What the weights show was taken over: the embedding and the transformer body, each
    shared, not shared, or unknown (no test able to see it ran). "not shared" needs a test that
    could have seen it shared: the embedding's rotation (the permutation cannot see a rotated
    copy), and for the body either scores under an alignment that passed or every body witness
    the depths call for."""
    ran = witnesses_run(alignment, circuit_spectra)
    embedding_tested = [w for w in alignment["witnesses"] if w["witness"] in EMBEDDING_WITNESSES]
    if any(map(copy_level, embedding_tested)):
        embedding = SHARED
    else:
        embedding = NOT_SHARED if EMBEDDING_ROTATION in ran else UNKNOWN
    if is_derived(call):
        body = SHARED
    elif alignment["basis"] is not None or body_weights is not None:
        body = NOT_SHARED
    else:
        looked = ran and not [kind for kind in unseen(alignment, circuit_spectra, depths) if kind != KEPT_EMBEDDING]
        body = NOT_SHARED if looked else UNKNOWN
    return {"embedding": embedding, "body": body}


def _unaligned_verdict(final, circuit, null):
    """No witness could be tested (no shared tokens, a body too shallow to hold layers out):
    the paper's rule applies as it stands, to the dims in stored order."""
    caveat = " (no correspondence test: too few shared tokens, and too few layers to test the body)"
    if above_reference(final, null):
        return "derived", f"AWM score {final:.2f} % is {z_score(final, null):.0f} sigma above independent pairs{caveat}"
    if above_reference(circuit, null):
        return "derived (disguised)", f"the QK-circuit score {circuit:.2f} % is far above independent pairs{caveat}"
    return "inconclusive", f"both scores lie within the range of independent models, but without an alignment a permuted copy would look the same{caveat}"


def _fmt_plain(value):
    return "undefined" if value is None else f"{value:.2f}"


# Every verdict the tool can give; the first two count as "derived" wherever a call is counted.
# "no evidence of derivation": no witness found anything, but some derivation the pair's shapes
# allow was seen by none that ran; "independent" only when every one was looked for.
NO_EVIDENCE = "no evidence of derivation"
VERDICTS = ("derived", "derived (disguised)", "inconclusive", NO_EVIDENCE, "independent", "undefined")
DERIVED_CALLS = ("derived", "derived (disguised)")
# Best matches first in a ranking: a derived verdict outranks a higher score with another verdict.
RANK = {"derived": 0, "derived (disguised)": 0, "inconclusive": 1, NO_EVIDENCE: 2, "independent": 3, "undefined": 4}


def is_derived(call):
    return call in DERIVED_CALLS


def read_reference(path):
    """A null_stats.json (mean and std of independent pairs, percent) as a reference for Z."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        mean, std = float(data["mean"]), float(data["std"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(path, f"null stats need numeric 'mean' and 'std' in percent ({err.__class__.__name__})") from None
    if std <= 0 or not (math.isfinite(mean) and math.isfinite(std)):
        raise CheckpointError(path, "null stats: std must be positive")
    return {"name": f"custom ({os.path.basename(path)})", "mean": mean, "std": std, "source": os.path.abspath(path)}


def load_reference(null_stats=None):
    """The reference for Z: the paper's, a dict with mean/std (percent), or a null_stats.json path."""
    if not null_stats:
        return PAPER_NULL
    if isinstance(null_stats, dict):
        return {"name": "custom", "source": "given by the caller", **null_stats}
    return read_reference(null_stats)
