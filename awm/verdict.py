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


# Every verdict the tool can give; the first two count as "derived" wherever a call is counted.
VERDICTS = ("derived", "derived (disguised)", "inconclusive", "independent", "undefined")
DERIVED_CALLS = ("derived", "derived (disguised)")
# Best matches first in a ranking: a derived verdict outranks a higher score with another verdict.
RANK = {"derived": 0, "derived (disguised)": 0, "inconclusive": 1, "independent": 2, "undefined": 3}


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
