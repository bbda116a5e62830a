"""The verdict rule and the Z-score, on numbers chosen around their thresholds."""
import pytest

from awm.suites import evaluation
from awm.witnesses import verdict

NULL = verdict.PAPER_NULL
THRESHOLD = NULL["mean"] + verdict.DERIVED_Z * NULL["std"]
ABOVE, BELOW = THRESHOLD + 0.01, THRESHOLD - 0.01


def correspondence(p_value, matched=100, dims=256):
    return {"matched_dims": matched, "target_dims": dims, "p_value": p_value}


SHARED = correspondence(verdict.CORRESPONDENCE_P)
NONE = correspondence(verdict.CORRESPONDENCE_P * 1.01, matched=1)


# ----------------------------------------------------------------------------- witnesses beyond the embedding
def witness(name, confirmed, matched=100, dims=256):
    return {"witness": name, "confirmed": confirmed, "matched_dims": matched, "target_dims": dims,
            "p_value": 1e-4 if confirmed else 0.5}


EMBEDDING_FAILED = witness("embedding permutation", False, matched=0)
ROTATION = {"basis": "embedding rotation", "witnesses": [EMBEDDING_FAILED, witness("embedding rotation", True)]}
BODY = {"basis": "body permutation", "witnesses": [EMBEDDING_FAILED, witness("embedding rotation", False, 0), witness("body permutation", True)]}
NOTHING = {"basis": None, "witnesses": [EMBEDDING_FAILED, witness("embedding rotation", False, 0), witness("body permutation", False, 0)]}
PERMUTATION = {"basis": "embedding permutation", "witnesses": [witness("embedding permutation", True)]}
# The circuit spectra compared (equal depth) and far apart, as for unrelated models.
SPECTRA_APART = {"confirmed": False, "distance": 0.35, "shuffled": 0.36, "contrast": 0.97, "layers": 4}
LOOKED = {"alignment": NOTHING, "circuit_spectra": SPECTRA_APART, "depths": (4, 4)}



def call(final, circuit, test, residual_final=0.0, residual_circuit=0.0):
    """Without a correspondence: every witness ran and found nothing (LOOKED)."""
    residual = {"final": residual_final, "qk_circuit": residual_circuit}
    looked = LOOKED if test is NONE else {}
    return verdict.verdict({"final": final, "qk_circuit": circuit}, residual, test, NULL, **looked)


def test_z_score_is_absolute_distance_in_standard_deviations():
    assert verdict.z_score(NULL["mean"] + 0.56, NULL) == pytest.approx(2.0)
    assert verdict.z_score(NULL["mean"] - 0.56, NULL) == pytest.approx(2.0)
    assert verdict.z_score(None, NULL) is None


@pytest.mark.parametrize("final,circuit,test,residual,expected", [
    # The embeddings correspond: the scores decide, as in the paper.
    (ABOVE, ABOVE, SHARED, (0, 0), "derived"),
    (BELOW, 99.0, SHARED, (0, 0), "derived (disguised)"),
    (BELOW, BELOW, SHARED, (0, 0), "inconclusive"),
    # No correspondence: high scores are explained by shared directions, or left open.
    (28.0, 11.0, NONE, (BELOW, BELOW), "independent"),
    (BELOW, BELOW, NONE, (0, 0), "independent"),
    (28.0, 11.0, NONE, (ABOVE, 0), "inconclusive"),
    (28.0, 11.0, NONE, (0, ABOVE), "inconclusive"),
    # No shared vocabulary: the paper's rule on stored-order dims.
    (ABOVE, ABOVE, None, (0, 0), "derived"),
    (BELOW, 99.0, None, (0, 0), "derived (disguised)"),
    (BELOW, BELOW, None, (0, 0), "inconclusive"),
    (None, 50.0, SHARED, (0, 0), "undefined"),
])
def test_verdict_rule(final, circuit, test, residual, expected):
    assert call(final, circuit, test, *residual)[0] == expected


def test_independent_models_are_never_derived_without_correspondence_whatever_the_scores():
    for final in (BELOW, ABOVE, 30.0, 99.0):
        assert call(final, final, NONE, 0.0, 0.0)[0] == "independent"
        assert call(final, final, NONE, 99.0, 99.0)[0] == ("independent" if final == BELOW else "inconclusive")


def test_reasons_name_the_evidence():
    assert "correspond one to one (100 of 256 dims" in call(ABOVE, ABOVE, SHARED)[1]
    assert "directions that all embedding columns share" in call(28.0, 11.0, NONE, 0.5, 0.2)[1]
    assert "far higher" in call(19.0, 100.0, SHARED)[1]
    assert "far higher" not in call(90.0, 100.0, SHARED)[1]


def rows(confirmed, decisive=True):
    return {"confirmed": confirmed, "decisive": decisive, "matched_rows": 300 if confirmed else 1, "rows": 1536, "p_value": 1e-4 if confirmed else 1.0}


def judged(paper, aligned, alignment, body_weights=None, residual=(0.0, 0.0), spectra=SPECTRA_APART, depths=(4, 4)):
    scores = {"final": paper[0], "qk_circuit": paper[1]}
    under = None if aligned is None else {"final": aligned[0], "qk_circuit": aligned[1]}
    call, reason = verdict.verdict(scores, {"final": residual[0], "qk_circuit": residual[1]}, None, NULL, alignment, under, body_weights,
                                   spectra, depths)
    return call, reason, verdict.inheritance(call, alignment, body_weights, spectra, depths)


@pytest.mark.parametrize("paper,aligned,alignment,body_weights,residual,expected,inherited", [
    # The verdict reads the scores under the witness, not the paper's (at the null here).
    ((0.5, 0.8), (85.0, 100.0), ROTATION, rows(True), (0.0, 0.0), "derived", ("shared", "shared")),
    ((0.1, 0.0), (100.0, 100.0), BODY, None, (0.0, 0.0), "derived", ("not shared", "shared")),
    ((0.1, 0.0), (BELOW, 99.0), BODY, None, (0.0, 0.0), "derived (disguised)", ("not shared", "shared")),
    ((0.1, 0.0), (BELOW, BELOW), BODY, None, (0.0, 0.0), "inconclusive", ("not shared", "not shared")),
    # The embedding's pairing holds, the body's rows decide whether more than the embedding came along.
    ((35.0, 15.0), (35.0, 15.0), PERMUTATION, rows(True), (0.0, 0.0), "derived", ("shared", "shared")),
    ((35.0, 15.0), (35.0, 15.0), PERMUTATION, rows(False), (0.0, 0.0), "inconclusive", ("shared", "not shared")),
    ((3.8, 3.9), (3.8, 3.9), PERMUTATION, rows(False, decisive=False), (0.0, 0.0), "derived", ("shared", "shared")),
    ((19.0, 100.0), (19.0, 100.0), PERMUTATION, rows(False), (0.0, 0.0), "derived (disguised)", ("shared", "shared")),
    # No witness: the residual scores decide, as before.
    ((28.0, 11.0), None, NOTHING, None, (0.0, 0.0), "independent", ("not shared", "not shared")),
    ((28.0, 11.0), None, NOTHING, None, (ABOVE, 0.0), "inconclusive", ("not shared", "not shared")),
])
def test_verdict_rests_on_the_witness_that_passed(paper, aligned, alignment, body_weights, residual, expected, inherited):
    call, reason, inheritance = judged(paper, aligned, alignment, body_weights, residual)
    assert call == expected, reason
    assert (inheritance["embedding"], inheritance["body"]) == inherited


def test_witness_reasons_say_which_alignment_and_what_was_inherited():
    assert "rotation of the hidden space" in judged((0.5, 0.8), (85.0, 100.0), ROTATION)[1]
    assert "the embedding was redrawn or replaced" in judged((0.1, 0.0), (100.0, 100.0), BODY)[1]
    assert "(the paper's score, on the embedding's pairing: 0.10 %)" in judged((0.1, 0.0), (100.0, 100.0), BODY)[1]
    assert "Only the embedding was inherited" in judged((35.0, 15.0), (35.0, 15.0), PERMUTATION, rows(False))[1]
    assert "no witness shows a correspondence" in judged((0.5, 0.2), None, NOTHING)[1]


def test_no_scores_without_any_alignment_is_inconclusive_not_undefined():
    call, reason, inheritance = judged((None, None), None, {"basis": None, "witnesses": [witness("body permutation", False, 0)]})
    assert call == "inconclusive" and "scores are undefined" in reason
    assert inheritance == {"embedding": "unknown", "body": "not shared"}


def test_independent_only_when_every_derivation_the_depths_allow_was_looked_for():
    call, reason, inheritance = judged((0.3, 0.3), None, NOTHING)
    assert call == "independent" and inheritance == {"embedding": "not shared", "body": "not shared"}
    # Different depth without the spectra: a re-embedded, depth-pruned child would look the same.
    call, reason, inheritance = judged((0.3, 0.3), None, NOTHING, spectra=None, depths=(30, 18))
    assert call == verdict.NO_EVIDENCE and "no evidence of derivation found" in reason
    assert verdict.OTHER_DEPTH_BODY in reason and "circuit spectra were not compared" in reason
    assert "embedding rotation: agreement" not in reason and "body permutation p = 0.5" in reason     # the witnesses run, named
    assert inheritance == {"embedding": "not shared", "body": "unknown"}
    # ... and with the spectra matched in order and far apart: every derivation was looked for.
    apart = {"confirmed": False, "distance": 0.14, "shuffled": 0.15, "contrast": 0.93, "layers": 18, "depths": [18, 30]}
    call, reason, inheritance = judged((0.3, 0.3), None, NOTHING, spectra=apart, depths=(30, 18))
    assert call == "independent" and inheritance == {"embedding": "not shared", "body": "not shared"}
    # Equal depth, the spectra not compared: a rotated body under a new embedding was not looked for.
    call, reason, inheritance = judged((0.3, 0.3), None, NOTHING, spectra=None)
    assert call == verdict.NO_EVIDENCE and verdict.ROTATED_BODY in reason and verdict.PERMUTED_BODY not in reason
    assert inheritance["body"] == "unknown"
    # Too few shared tokens for the embedding's witnesses: the body's alone cannot call it independent.
    body_only = {"basis": None, "witnesses": [witness("body permutation", False, 0)]}
    call, reason, inheritance = judged((0.3, 0.3), None, body_only)
    assert call == verdict.NO_EVIDENCE and verdict.KEPT_EMBEDDING in reason and "64 shared tokens" in reason
    assert inheritance == {"embedding": "unknown", "body": "not shared"}
    # A record of the permutation alone (no rotation looked for) is never "independent".
    call_legacy = verdict.verdict({"final": 0.3, "qk_circuit": 0.3}, {"final": 0.0, "qk_circuit": 0.0}, NONE, NULL)
    assert call_legacy[0] == verdict.NO_EVIDENCE and not verdict.is_derived(verdict.NO_EVIDENCE)


def test_no_evidence_ranks_between_inconclusive_and_independent():
    order = sorted(verdict.VERDICTS, key=verdict.RANK.get)
    assert order.index("inconclusive") < order.index(verdict.NO_EVIDENCE) < order.index("independent")
    assert verdict.VERDICTS[-1] == "undefined"             # tables leave the last one out


def test_the_spectra_reason_quotes_the_measured_independent_pairs():
    import json
    import os

    assets = os.path.join(os.path.dirname(__file__), "..", "..", "asset")
    with open(os.path.join(assets, "calibration_real.json"), encoding="utf-8") as handle:
        rows = json.load(handle)["rows"]
    measured = [r["witnesses"]["circuit spectra"]["distance"] for r in rows
                if r["label"] == "independent" and r["witnesses"]["circuit spectra"] is not None]
    with open(os.path.join(assets, "blind_spots.json"), encoding="utf-8") as handle:
        measured += [r["witnesses"]["circuit spectra"]["value"] for r in json.load(handle)["rows"]
                     if r["label"] == "independent" and r["witnesses"]["circuit spectra"]["value"] is not None]
    assert verdict.SPECTRA_INDEPENDENT == {"distance": min(measured), "pairs": len(measured)}
    spectra = {"confirmed": True, "distance": 0.0004, "shuffled": 0.05, "contrast": 0.008, "layers": 4}
    reason = judged((0.3, 0.3), None, NOTHING, spectra=spectra)[1]
    assert f"({len(measured)}) differ" in reason and f"{min(measured):.2f} or more" in reason and "0.2 or more" not in reason


def test_confusion_table_counts_verdicts_per_label():
    records = [{"label": "derived", "verdict": "derived"}, {"label": "derived", "verdict": "inconclusive"},
               {"label": "independent", "verdict": "independent"}, {"label": "independent", "verdict": "derived (disguised)"},
               {"label": None, "verdict": "derived"}]
    confusion = evaluation.verdict_confusion(records)
    assert confusion["counts"]["derived"]["derived"] == 1 and confusion["counts"]["derived"]["inconclusive"] == 1
    assert confusion["true_positive_rate"] == 0.5
    assert confusion["false_positive_rate"] == 0.5
    assert confusion["independent_called_independent"] == 0.5
    looked_less = evaluation.verdict_confusion(records + [{"label": "independent", "verdict": verdict.NO_EVIDENCE}])
    assert looked_less["counts"]["independent"][verdict.NO_EVIDENCE] == 1
    assert looked_less["independent_called_independent"] == pytest.approx(1 / 3)
    assert looked_less["independent_no_evidence_found"] == pytest.approx(2 / 3)
