"""Turning a comparison into what people and scripts read: console lines, JSON, Z-scores."""
import json
import math
import os
import tempfile

TOOL_VERSION = "0.2.0"

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
# only share a common direction (see README, "How the verdict is reached").
CORRESPONDENCE_P = 1e-3


def above_reference(value, null):
    """A score (percent) at least DERIVED_Z standard deviations above independent pairs."""
    return value is not None and value - null["mean"] >= DERIVED_Z * null["std"]


def _dims(test):
    return f"{test['matched_dims']} of {test['target_dims']} dims, p <= {test['p_value']:.2g}"


def verdict(scores, residual, correspondence, null):
    """derived / derived (disguised) / independent / inconclusive, with a plain reason.

    A score counts only when the alignment under it is real: the embeddings' dims must
    correspond one to one beyond the directions every column shares. Without that, a high
    score is what anisotropic embeddings give any pair, and the residual scores decide.
    """
    final, circuit = scores.get("final"), scores.get("qk_circuit")
    if final is None:
        return "undefined", "the AWM score is undefined for these weights"
    if correspondence is None:
        return _unaligned_verdict(final, circuit, null)
    z = z_score(final, null)
    if correspondence["p_value"] <= CORRESPONDENCE_P:
        shared = f"the embedding dimensions correspond one to one ({_dims(correspondence)})"
        if above_reference(final, null):
            reason = f"{shared} and the AWM score {final:.2f} % is {z:.0f} sigma above independent pairs"
            if circuit is not None and circuit - final >= DISGUISE_GAP:
                reason += f"; the QK-circuit score ({circuit:.1f} %) is far higher, as after a reparametrizing disguise"
            return "derived", reason
        if above_reference(circuit, null):
            return "derived (disguised)", (f"{shared}; the stored attention weights look unrelated but what attention "
                                           "computes matches: the weights were reparametrized")
        return "inconclusive", (f"{shared}, but neither score rises above independent pairs: only the embedding "
                                "was inherited, or the attention weights were retrained beyond what the scores can see")
    none = f"the embeddings show no one-to-one dimension correspondence (p = {correspondence['p_value']:.2g})"
    if not (above_reference(final, null) or above_reference(circuit, null)):
        return "independent", f"{none}, and both scores lie within the range of independently trained models"
    if not (above_reference(residual.get("final"), null) or above_reference(residual.get("qk_circuit"), null)):
        return "independent", (f"{none}; the AWM score of {final:.2f} % comes from directions that all embedding "
                               f"columns share (without them: {_fmt_plain(residual.get('final'))} %), not from inherited weights")
    return "inconclusive", (f"{none}, yet the scores stay above independent pairs without the shared directions "
                            f"(AWM {_fmt_plain(residual.get('final'))} %, QK circuit {_fmt_plain(residual.get('qk_circuit'))} %): "
                            "related training, not evidence of derivation")


def _unaligned_verdict(final, circuit, null):
    """No correspondence test possible (no shared vocabulary: dims in stored order; or too
    few shared tokens): the paper's rule applies as it stands."""
    caveat = " (no correspondence test: no shared vocabulary, or too few shared tokens to test)"
    if above_reference(final, null):
        return "derived", f"AWM score {final:.2f} % is {z_score(final, null):.0f} sigma above independent pairs{caveat}"
    if above_reference(circuit, null):
        return "derived (disguised)", f"the QK-circuit score {circuit:.2f} % is far above independent pairs{caveat}"
    return "inconclusive", f"both scores lie within the range of independent models, but without an alignment a permuted copy would look the same{caveat}"


def _fmt_plain(value):
    return "undefined" if value is None else f"{value:.2f}"


def to_percent(result):
    """Scores are computed as fractions and reported in percent, rounded to 1e-4 %."""
    pct = lambda v: None if v is None else round(100.0 * v, 4)
    result["scores"] = {k: pct(v) for k, v in result["scores"].items()}
    result["residual_scores"] = {k: pct(v) for k, v in result["residual_scores"].items()}
    for layer in result["layers"]:
        for key in ("wq", "wk", "qk_circuit"):
            layer[key] = pct(layer[key])
    return result


def pair_report(result, meta_a, meta_b, null, timings):
    """Assemble the stable JSON record of one pair."""
    scores = result["scores"]
    call, reason = verdict(scores, result["residual_scores"], result["evidence"]["correspondence"], null)
    return {
        "tool": "awm",
        "version": TOOL_VERSION,
        "model_a": meta_a,
        "model_b": meta_b,
        "scores": {**scores, "z_score": _round(z_score(scores["final"], null))},
        "residual_scores": result["residual_scores"],
        "verdict": call,
        "verdict_reason": reason,
        "reference": null,
        "evidence": result["evidence"],
        "layers": result["layers"],
        "timings": timings,
    }


def _round(value, digits=3):
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _fmt(value, unit=" %"):
    return "undefined" if value is None else f"{value:7.2f}{unit}"


def _describe(meta):
    return (f"{meta['architecture']}, hidden {meta['hidden_size']}, {meta['num_layers']} layers, "
            f"{meta['num_heads']}/{meta['num_kv_heads']} heads, vocab {meta['vocab_size']:,}, {meta['dtype']}")


def _bytes(count):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000


def _source_lines(meta):
    """For a Hub model: the commit read and how little of the repo it took."""
    source = meta.get("source")
    if not source:
        return []
    share = source["needed_bytes"] / source["repo_bytes"] if source["repo_bytes"] else 0
    return [f"   from the Hub: {source['hub_repo']} @ {source['revision']} = commit {source['commit'][:12]}; "
            f"read {_bytes(source['needed_bytes'])} of the repo's {_bytes(source['repo_bytes'])} ({100 * share:.1f} %), "
            + (f"{_bytes(source['fetched_bytes'])} transferred this run" if source["fetched_bytes"] else "all from the cache")]


def _residual_line(residual):
    if residual["final"] is None and residual["qk_circuit"] is None:
        return "not computed (only needed when the embeddings show no correspondence and a score is high)"
    return (f"AWM {_fmt(residual['final'])}   QK circuit {_fmt(residual['qk_circuit'])}"
            "   (the embeddings' common directions projected out)")


def _correspondence_line(test):
    if test is None:
        return "not tested (no shared vocabulary)"
    return (f"{test['matched_dims']}/{test['target_dims']} dims match one to one beyond shared directions "
            f"(p {'<=' if test['matched_dims'] else '='} {test['p_value']:.2g}; median {test['median_matched_sigmas']:.1f} sigma)")


def summary_lines(report):
    """The human summary of one pair: scores first, then the evidence behind them."""
    ev, sc, ref = report["evidence"], report["scores"], report["reference"]
    base = "A" if ev["base_model"] == "a" else "B"
    if ev["layer_map"] is None:
        depth = f"{ev['layers_a']} vs {ev['layers_b']} (layer i with layer i)"
    else:
        depth = f"{ev['layers_a']} vs {ev['layers_b']}, matched by LAP: " + " ".join(f"{a}-{b}" for a, b in ev["layer_map"])
    alignment = (f"{ev['shared_tokens']:,} shared tokens, base {base}, {ev['matched_hidden_dims']}/{ev['base_hidden_dims']} "
                 f"dims matched, {ev['sign_flips']} sign flips, mean |cos| {ev['mean_abs_cosine']:.3f}"
                 if ev["aligned"] else "UNALIGNED (dims compared in stored order)")
    z = sc["z_score"]
    lines = [
        f"A  {report['model_a']['path']}",
        f"   {_describe(report['model_a'])}",
        *_source_lines(report["model_a"]),
        f"B  {report['model_b']['path']}",
        f"   {_describe(report['model_b'])}",
        *_source_lines(report["model_b"]),
        f"  alignment          {alignment}",
        f"  layers             {depth}",
        f"  Wq similarity      {_fmt(sc['wq'])}",
        f"  Wk similarity      {_fmt(sc['wk'])}",
        f"  AWM score (Wq*Wk)  {_fmt(sc['final'])}   |Z| = {'n/a' if z is None else f'{z:.1f}'} against {ref['name']} "
        f"independent pairs (mean {ref['mean']:.3f} %, std {ref['std']:.3f} %)",
        f"  QK-circuit score   {_fmt(sc['qk_circuit'])}   (disguise-robust: norm-gain folding, RoPE-pair scaling)",
        f"  correspondence     {_correspondence_line(ev.get('correspondence'))}",
        f"  without shared     {_residual_line(report['residual_scores'])}",
        f"  verdict            {report['verdict'].upper()}: {report['verdict_reason']}",
        f"  computed           {_computed_line(report.get('timings') or {})}",
    ]
    lines += [f"  note               {note}" for note in ev["notes"]]
    return lines


PRODUCT_WORDS = {"exact": "float32 products", "fast": "bfloat16 products, CKAs within ~1e-3 pp of exact"}


def _computed_line(timings):
    precision = timings.get("precision", "exact")
    total = f", {timings['total_s']:.1f} s" if "total_s" in timings else ""
    return f"{precision} ({PRODUCT_WORDS.get(precision, precision)}) on {timings.get('device', '?')}{total}"


def write_text_atomic(path, text):
    """Write to a temporary file in the same folder, then rename: never a half-written file."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_json_atomic(path, data):
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
