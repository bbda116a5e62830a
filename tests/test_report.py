"""The verdict rule and the Z-score, on numbers chosen around their thresholds."""
import pytest

import report

NULL = report.PAPER_NULL
THRESHOLD = NULL["mean"] + report.DERIVED_Z * NULL["std"]


def test_z_score_is_absolute_distance_in_standard_deviations():
    assert report.z_score(NULL["mean"] + 0.56, NULL) == pytest.approx(2.0)
    assert report.z_score(NULL["mean"] - 0.56, NULL) == pytest.approx(2.0)
    assert report.z_score(None, NULL) is None


@pytest.mark.parametrize("final,circuit,call", [
    (THRESHOLD + 0.01, THRESHOLD + 0.01, "derived"),
    (THRESHOLD - 0.01, THRESHOLD - 0.01, "independent"),
    (THRESHOLD - 0.01, 99.0, "derived (disguised)"),
    (0.1, None, "independent"),
    (None, 50.0, "undefined"),
])
def test_verdict_thresholds(final, circuit, call):
    assert report.verdict({"final": final, "qk_circuit": circuit}, NULL)[0] == call


def test_reason_points_out_a_large_circuit_gap():
    assert "far higher" in report.verdict({"final": 19.0, "qk_circuit": 100.0}, NULL)[1]
    assert "far higher" not in report.verdict({"final": 90.0, "qk_circuit": 100.0}, NULL)[1]
