"""One pair's JSON record: scores in percent, the verdict, the evidence, per-layer values."""
import math

from awm.version import VERSION
from awm.witnesses import verdict as rule


def to_percent(result):
    """Scores are computed as fractions and reported in percent, rounded to 1e-4 %."""
    pct = lambda v: None if v is None else round(100.0 * v, 4)
    result["scores"] = {k: pct(v) for k, v in result["scores"].items()}
    result["residual_scores"] = {k: pct(v) for k, v in result["residual_scores"].items()}
    if result.get("aligned_scores") is not None:
        result["aligned_scores"] = {k: pct(v) for k, v in result["aligned_scores"].items()}
    for layer in result["layers"]:
        for key in ("wq", "wk", "qk_circuit"):
            layer[key] = pct(layer[key])
    return result


def pair_report(result, meta_a, meta_b, null, timings):
    """Assemble the stable JSON record of one pair."""
    scores, evidence = result["scores"], result["evidence"]
    depths, spectra = (evidence.get("layers_a"), evidence.get("layers_b")), evidence.get("circuit_spectra")
    call, reason = rule.verdict(scores, result["residual_scores"], evidence["correspondence"], null, evidence["alignment"],
                                result["aligned_scores"], evidence["body_weights"], spectra, depths)
    aligned = result["aligned_scores"]
    # The scores the verdict read are judged against the null of their alignment.
    verdict_null = rule.null_for(evidence["alignment"]["basis"], null)
    if aligned is not None:
        aligned = {**aligned, "z_score": _round(rule.z_score(aligned["final"], verdict_null))}
    return {
        "tool": "awm",
        "version": VERSION,
        "model_a": meta_a,
        "model_b": meta_b,
        "scores": {**scores, "z_score": _round(rule.z_score(scores["final"], null))},
        "residual_scores": result["residual_scores"],
        "aligned_scores": aligned,
        "verdict": call,
        "verdict_reason": reason,
        "inheritance": rule.inheritance(call, evidence["alignment"], evidence["body_weights"], spectra, depths),
        "reference": null,
        "verdict_reference": verdict_null,
        "evidence": result["evidence"],
        "layers": result["layers"],
        "timings": timings,
    }


def _round(value, digits=3):
    return None if value is None or not math.isfinite(value) else round(value, digits)
