"""The margins script (benchmarks/calibration_margins.py): every derived pair counts for every
witness, the leave-one-family-out bar never sees the family it scores, and the stored asset is
what the script makes of the stored calibration."""
import importlib.util
import json
import os

import pytest

from awm.witnesses import verdict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def margins():
    spec = importlib.util.spec_from_file_location("calibration_margins", os.path.join(ROOT, "benchmarks", "calibration_margins.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measured(agreement, p_value=1e-4):
    return {"p_value": p_value, "agreement": agreement, "matched_dims": 10, "target_dims": 64}


def row(a, b, label, permutation, kept="P", spectra=None, verdict_given=None):
    tests = {verdict.EMBEDDING_PERMUTATION: measured(permutation), verdict.EMBEDDING_ROTATION: measured(0.5 if label == "independent" else 0.99),
             verdict.BODY_PERMUTATION: measured(0.05, 1.0), verdict.CIRCUIT_SPECTRA: spectra}
    return {"a": a, "b": b, "label": label, "kept": kept if label == "derived" else "", "what": "made up",
            "verdict": verdict_given or ("derived" if label == "derived" else "independent"), "witnesses": tests,
            "first_pass": {"embedding": 0.5, "columns": 0.3, "body": 0.1}}


ROWS = [row("smollm2", "gemma", "independent", 0.08), row("qwen05", "qwen15", "independent", 0.20),
        row("smollm2", "smollm2-finetune", "derived", 0.99), row("smollm2", "smollm2-redrawn-embedding", "derived", 0.0, kept="BS"),
        row("qwen05", "qwen-finetune", "derived", 0.97), row("qwen05", "qwen-rotated", "derived", 0.12, kept="RS")]


def test_every_derived_pair_counts_for_every_witness(margins):
    found = margins.margins(ROWS, margins.MEASURES[0])
    assert found["derived"]["pairs"] == found["derived"]["measured"] == 4
    assert found["derived"]["passing"] == 2 and found["derived"]["weakest"] == 0.0 and found["derived"]["weakest_passing"] == 0.97
    assert len(found["derived"]["failing"]) == 2 and found["derived"]["failing_of_its_kind"] == []
    assert found["unrelated"]["closest"] == 0.20 and found["unrelated"]["distinct_family_pairs"] == 2
    assert found["margin"] == {"bar_minus_closest_unrelated": 0.05, "weakest_passing_minus_bar": 0.72}
    assert any("unrelated side: 2 real pair(s)" in note for note in found["thin"])


def test_the_left_out_bar_is_the_middle_of_the_widest_gap_beyond_the_closest_unrelated(margins):
    measure = margins.MEASURES[0]
    # Unrelated up to 0.20; beyond it 0.97 and 0.99 (0.12 and 0.0 lie on the unrelated side).
    assert margins.lofo_bar(ROWS, measure) == pytest.approx((0.20 + 0.97) / 2)
    table = margins.leave_one_family_out(ROWS, measure)
    # Without the Qwen families the closest unrelated pair is SmolLM2 vs Gemma (0.08), and the
    # widest gap is 0.08 -> 0.99.
    assert table["Qwen2.5-Coder-0.5B"]["bar_from_others"] == pytest.approx((0.08 + 0.99) / 2)
    assert table["Qwen2.5-Coder-0.5B"]["errors_at_that_bar"] == {"false_passes": [], "misses": ["qwen05 vs qwen-rotated"]}
    # Without SmolLM2: Qwen's unrelated pair (0.20) and the Qwen children set it; SmolLM2's redrawn child is a miss.
    assert table["SmolLM2-135M"]["bar_from_others"] == pytest.approx((0.20 + 0.97) / 2)
    assert table["SmolLM2-135M"]["errors_at_that_bar"]["misses"] == ["smollm2 vs smollm2-redrawn-embedding"]
    # No unrelated pair to set it from: no bar.
    assert margins.lofo_bar(ROWS[2:], measure) is None and margins.errors(ROWS, measure, None) is None


def test_unrelated_pairs_of_different_depth_now_show_no_evidence(margins):
    apart = {"confirmed": False, "distance": 0.35, "shuffled": 0.36, "contrast": 0.97, "layers": 18}
    rows = ROWS + [row("qwen-depth-pruned", "gemma", "independent", 0.06, spectra=apart)]
    found = margins.words(rows)
    assert [e["pair"] for e in found["unchanged"]] == ["qwen-depth-pruned vs gemma"]
    assert {e["pair"] for e in found["changed"]} == {"smollm2 vs gemma", "qwen05 vs qwen15"}
    assert all(e["now"] == verdict.NO_EVIDENCE and e["unseen"] == [verdict.OTHER_DEPTH_BODY] for e in found["changed"])
    with pytest.raises(ValueError):                                 # the depths table must agree with the stored spectra
        margins.words([row("smollm2", "gemma", "independent", 0.08, spectra=apart)])


def test_the_stored_margins_are_the_scripts_reading_of_the_stored_calibration(margins):
    with open(os.path.join(ROOT, "asset", "calibration_real.json"), encoding="utf-8") as handle:
        rows = json.load(handle)["rows"]
    with open(os.path.join(ROOT, "asset", "calibration_margins.json"), encoding="utf-8") as handle:
        stored = json.load(handle)
    assert json.loads(json.dumps(margins.summarize(rows))) == stored
