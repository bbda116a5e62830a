"""The verdict rule and the Z-score, on numbers chosen around their thresholds."""
import pytest

from awm import evaluation, verdict

NULL = verdict.PAPER_NULL
THRESHOLD = NULL["mean"] + verdict.DERIVED_Z * NULL["std"]
ABOVE, BELOW = THRESHOLD + 0.01, THRESHOLD - 0.01


def correspondence(p_value, matched=100, dims=256):
    return {"matched_dims": matched, "target_dims": dims, "p_value": p_value}


SHARED = correspondence(verdict.CORRESPONDENCE_P)
NONE = correspondence(verdict.CORRESPONDENCE_P * 1.01, matched=1)


def call(final, circuit, test, residual_final=0.0, residual_circuit=0.0):
    residual = {"final": residual_final, "qk_circuit": residual_circuit}
    return verdict.verdict({"final": final, "qk_circuit": circuit}, residual, test, NULL)


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


def test_confusion_table_counts_verdicts_per_label():
    records = [{"label": "derived", "verdict": "derived"}, {"label": "derived", "verdict": "inconclusive"},
               {"label": "independent", "verdict": "independent"}, {"label": "independent", "verdict": "derived (disguised)"},
               {"label": None, "verdict": "derived"}]
    confusion = evaluation.verdict_confusion(records)
    assert confusion["counts"]["derived"]["derived"] == 1 and confusion["counts"]["derived"]["inconclusive"] == 1
    assert confusion["true_positive_rate"] == 0.5
    assert confusion["false_positive_rate"] == 0.5
    assert confusion["independent_called_independent"] == 0.5
