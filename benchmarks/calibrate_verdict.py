#!/usr/bin/env python
"""Calibration of the verdict on real trained models: false positives, misses, the test's level.

    python benchmarks/calibration_zoo.py     # once: builds the models (about an hour, cached)
    python benchmarks/calibrate_verdict.py [--json asset/calibration.json] [--figure asset/calibration]

Scores every labelled pair of the zoo (independent by construction, derived by a known
operation, or sharing only an embedding) and reports: each pair's scores, the witnesses asked
and the one the verdict rests on, the body-weights test, the verdict; the confusion table; and
each witness's empirical per-dim false-match rate on the independent pairs against its
nominal level.
"""
import argparse
import itertools
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import calibration_zoo  # noqa: E402

from awm import demo  # noqa: E402
from awm import method as sm  # noqa: E402
from awm.atomic import write_json_atomic  # noqa: E402
from awm.comparison.digest import digest_path  # noqa: E402
from awm.comparison.pair import compare_digests  # noqa: E402
from awm.readers import gguf_convert  # noqa: E402
from awm.suites import evaluation  # noqa: E402
from awm.witnesses import verdict  # noqa: E402

CPU = torch.device("cpu")
SCRATCH = list(calibration_zoo.SCRATCH)
FRESH = ["fresh-init-tiny", "fresh-init-smollm2"]
DERIVED = [  # (parent, child, what was done)
    ("scratch-code-s1", "s1-finetune-text", "fine-tuned on another corpus"),
    ("scratch-code-s1", "s1-cpt-hard", "continued pre-training on another corpus, 300 steps at a high rate"),
    ("scratch-code-s1", "s1-width-pruned", "hidden 256 -> 192, healed"),
    ("scratch-code-s1", "s1-depth-pruned", "4 -> 3 layers, healed"),
    ("smollm2", "smollm2-finetune", "fine-tuned"),
    ("smollm2", "smollm2-cpt-hard", "continued pre-training at a high learning rate"),
    ("smollm2", "smollm2-width-pruned", "hidden 576 -> 432, healed"),
    ("smollm2", "smollm2-depth-pruned", "30 -> 20 layers"),
    ("smollm2", "smollm2-moe", "upcycled to a 4-expert MoE"),
    ("smollm2", "smollm2-weak-positive", "embedding kept, attention 80 % re-drawn"),
    ("smollm2", "demo-disguised", "function-preserving disguise"),
    ("smollm2", "demo-heavily-disguised", "heavier disguise (norm folding, RoPE scaling)"),
    ("smollm2", "smollm2-hf", "GGUF vs its Hugging Face conversion"),
    # The embedding no longer carries the lineage.
    ("smollm2", "smollm2-redrawn-embedding", "embedding (tied head) redrawn at random, body untouched"),
    ("smollm2", "smollm2-transplant", "tokenizer transplant: a new 16k BPE, fresh rows, body untouched"),
    ("smollm2", "smollm2-transplant-tuned", "the transplant trained 40 steps on the new tokenizer"),
    ("smollm2", "smollm2-vocab-extended", "2,000 tokens of another tokenizer appended"),
    ("smollm2", "smollm2-rotated", "norm gains folded, residual stream rotated by a dense random orthogonal matrix"),
    ("smollm2", "smollm2-block-rotated", "the same with 64 x 64 blocks"),
    ("smollm2", "smollm2-rotated-sliced", "rotated, then sliced to 512 of 576 dims (SliceGPT-like)"),
    ("smollm2", "smollm2-redrawn-permuted", "hidden dims permuted, signed, rescaled and the embedding redrawn"),
    ("scratch-code-s1", "s1-rotated", "scratch model, residual stream rotated"),
    ("scratch-code-s1", "s1-redrawn-embedding", "scratch model, embedding redrawn"),
    ("scratch-code-s2", "s2-redrawn-embedding", "scratch model, embedding redrawn"),
]
EMBEDDING_ONLY = [  # the embedding inherited, the body trained from a fresh initialisation
    ("scratch-code-s1", "s1-embedding-fresh-body", "s1's embedding, a fresh body trained 300 steps"),
    ("smollm2", "smollm2-embedding-fresh-body", "SmolLM2's embedding, a fresh 4-layer body trained 200 steps"),
]
FOOLING = [  # independent pairs built to fool the witnesses that do not read the embedding's pairing
    ("s1-redrawn-embedding", "s2-redrawn-embedding", "same-recipe twins, both embeddings redrawn"),
    ("s1-redrawn-embedding", "scratch-code-s2", "same-recipe twins, one embedding redrawn"),
    ("smollm2-redrawn-embedding", "fresh-init-smollm2", "same tokenizer, both embeddings random"),
    ("s1-embedding-fresh-body", "scratch-code-s2", "s1's embedding with a fresh body vs s1's twin"),
    ("smollm2-transplant", "fresh-init-smollm2", "a transplant vs a fresh initialisation"),
    ("smollm2-embedding-fresh-body", "fresh-init-smollm2", "an inherited embedding vs a fresh initialisation"),
    ("s1-rotated", "scratch-code-s2", "a rotated model vs its parent's twin"),
] + [("smollm2-redrawn-embedding", s, "redrawn SmolLM2 vs a scratch model") for s in SCRATCH] + \
    [("smollm2-rotated", s, "rotated SmolLM2 vs a scratch model") for s in SCRATCH[1:]]
# Nothing found is right for an independent pair, whether or not its depths let every derivation be looked for.
EXPECTED = {"derived": ("derived", "derived (disguised)"), "independent": ("independent", verdict.NO_EVIDENCE),
            "embedding only": ("inconclusive",)}


def labelled_pairs():
    independent = [(a, b, "independent scratch models") for a, b in itertools.combinations(SCRATCH, 2)]
    independent += [("smollm2", s, "SmolLM2 vs a scratch model") for s in SCRATCH]
    independent += [(f, o, "fresh initialisation") for f in FRESH for o in ["smollm2"] + SCRATCH]
    independent += FOOLING
    return ([(a, b, why, "independent") for a, b, why in independent] + [(a, b, why, "derived") for a, b, why in DERIVED]
            + [(a, b, why, "embedding only") for a, b, why in EMBEDDING_ONLY])


def model_paths(zoo):
    paths = zoo.build_all()
    suspects = demo.build_suspects(demo.fetch_smollm2(), os.path.join(zoo.root, "demo"))
    paths["demo-disguised"], paths["demo-heavily-disguised"] = suspects["disguised"], suspects["heavily disguised"]
    state, config, tokenizer = gguf_convert.gguf_to_llama(demo.fetch_smollm2())
    hf = os.path.join(zoo.root, "smollm2-hf")
    if not os.path.isfile(os.path.join(hf, "model.safetensors")):
        gguf_convert.write_hf_model(hf, state, config, tokenizer)
    paths["smollm2-hf"] = hf
    return paths


def score_all(paths):
    digests = {}

    def digest(name):
        if name not in digests:
            digests[name] = digest_path(paths[name], CPU, keep_layers=True)
        return digests[name]

    rows = []
    for a, b, why, label in labelled_pairs():
        result = compare_digests(digest(a), digest(b), CPU, verdict.PAPER_NULL, progress=False, residual="always")
        evidence = result["evidence"]
        rows.append({"a": a, "b": b, "what": why, "label": label, "verdict": result["verdict"],
                     "right": result["verdict"] in EXPECTED[label], "inheritance": result["inheritance"],
                     "final": result["scores"]["final"], "qk_circuit": result["scores"]["qk_circuit"],
                     "z_score": result["scores"]["z_score"], "residual": result["residual_scores"],
                     "aligned": result["aligned_scores"], "basis": evidence["alignment"]["basis"],
                     "witnesses": evidence["alignment"]["witnesses"], "body_weights": evidence["body_weights"],
                     "mean_abs_cosine": evidence["mean_abs_cosine"], "correspondence": evidence["correspondence"],
                     "circuit_spectra": evidence["circuit_spectra"],
                     "reason": result["verdict_reason"]})
        tried = "  ".join(f"{w['witness'].split()[0][0]}{w['witness'].split()[1][0]} {w.get('matched_dims', '-')}/{w.get('target_dims', '-')}"
                          for w in evidence["alignment"]["witnesses"])
        rows_found = evidence["body_weights"]
        rows_text = f"rows {rows_found['matched_rows']}/{rows_found['rows']}" if rows_found else ""
        paper = "  n/a " if result["scores"]["final"] is None else f"{result['scores']['final']:6.2f}"
        under = (result["aligned_scores"] or {}).get("final")
        print(f"  {label:14s} {a[:24]:24s} {b[:26]:26s} AWM {paper} %  aligned {'  n/a ' if under is None else f'{under:6.2f}'} %  "
              f"{tried:40s} {rows_text:16s} -> {result['verdict']}{'' if rows[-1]['right'] else '   <-- WRONG'}", flush=True)
    return rows


def _false_matches(rows, witness):
    """Confirmed dims and dims tested by one witness over the independent pairs."""
    tested = [w for r in rows if r["label"] == "independent" for w in r["witnesses"] if w["witness"] == witness and "target_dims" in w]
    return sum(w["matched_dims"] for w in tested), sum(w["target_dims"] for w in tested), sum(w["confirmed"] for w in tested)


def changed_verdicts(rows, previous_path):
    """Pairs whose verdict or inheritance differs from the previous calibration file's (the rule
    it was written under), before that file is overwritten."""
    try:
        with open(previous_path, encoding="utf-8") as handle:
            before = {(r["a"], r["b"]): r for r in json.load(handle)["rows"]}
    except (OSError, ValueError, KeyError):
        return None
    return [{"pair": f"{r['a']} vs {r['b']}", "label": r["label"], "before": before[(r["a"], r["b"])]["verdict"], "now": r["verdict"],
             "inheritance_before": before[(r["a"], r["b"])].get("inheritance"), "inheritance_now": r["inheritance"]}
            for r in rows if (r["a"], r["b"]) in before
            and (before[(r["a"], r["b"])]["verdict"], before[(r["a"], r["b"])].get("inheritance")) != (r["verdict"], r["inheritance"])]


def _agreements(rows, label, witness):
    values = [w["agreement"] for r in rows if r["label"] == label for w in r["witnesses"] if w["witness"] == witness and "agreement" in w]
    return {"n": len(values), "min": min(values), "max": max(values)} if values else None


def summarize(rows):
    confusion = evaluation.verdict_confusion(rows)
    independent = [r for r in rows if r["label"] == "independent"]
    witnesses = {}
    for name in ("embedding permutation", "embedding rotation", "body permutation"):
        false, tested, pairs = _false_matches(rows, name)
        witnesses[name] = {"false_matches": false, "dims_tested": tested, "empirical_rate": false / tested if tested else None,
                           "independent_pairs_confirmed": pairs, "agreement_independent": _agreements(rows, "independent", name),
                           "agreement_derived_when_asked": _agreements(rows, "derived", name)}
    body_tests = [r["body_weights"] for r in independent if r["body_weights"]]
    return {
        "confusion": confusion,
        "right": sum(r["right"] for r in rows), "pairs": len(rows),
        "embedding_only": [{"pair": f"{r['a']} vs {r['b']}", "verdict": r["verdict"], "inheritance": r["inheritance"]}
                           for r in rows if r["label"] == "embedding only"],
        "old_rule_false_positives": sum(r["z_score"] is not None and r["z_score"] >= verdict.DERIVED_Z for r in independent),
        "independent_pairs": len(independent),
        "nominal_rate": sm.CORRESPONDENCE_ALPHA,
        "witnesses": witnesses,
        "body_weights_on_independent_pairs": {"rows_confirmed": sum(t["matched_rows"] for t in body_tests),
                                              "rows_tested": sum(t["rows"] for t in body_tests)},
    }


def figure(rows, path):
    """Left: the paper's score against the score under the alignment the verdict rests on.
    Right: the best witness's fraction of confirmed dims against that score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"independent": "tab:blue", "derived": "tab:red", "embedding only": "tab:orange"}
    markers = {"derived": "x", "derived (disguised)": "x", "independent": "o", "inconclusive": "s", "undefined": "+"}
    floor = lambda v: max(v if v is not None else 0.0, 1e-2)
    for r in rows:
        under = (r["aligned"] or {}).get("final")
        best = max((w.get("fraction", 0.0) for w in r["witnesses"]), default=0.0)
        style = dict(c=colors[r["label"]], s=28, marker=markers[r["verdict"]])
        axes[0].scatter(floor(r["final"]), floor(under if under is not None else r["final"]), **style)
        axes[1].scatter(max(best, 1e-3), floor(under if under is not None else r["final"]), **style)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(verdict.PAPER_NULL["mean"] + verdict.DERIVED_Z * verdict.PAPER_NULL["std"], color="grey", lw=0.8, ls="--")
    axes[0].set_xlabel("the paper's AWM score (%)")
    axes[0].set_ylabel("AWM score under the verdict's alignment, else the paper's (%)")
    axes[0].set_title("red derived, blue independent, orange embedding only")
    axes[1].set_xlabel("best witness: fraction of dims confirmed on held-out data")
    axes[1].set_ylabel("AWM score under the verdict's alignment (%)")
    axes[1].set_title("marker: x derived, o independent, square inconclusive")
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(f"{path}.{ext}", dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=calibration_zoo.DEFAULT_ROOT)
    parser.add_argument("--json", default=os.path.join(ROOT, "asset", "calibration.json"))
    parser.add_argument("--figure", default=os.path.join(ROOT, "asset", "calibration"))
    args = parser.parse_args()
    rows = score_all(model_paths(calibration_zoo.Zoo(args.root)))
    summary = summarize(rows)
    summary["changed_since_previous_file"] = changed_verdicts(rows, args.json)
    print(json.dumps(summary, indent=1))
    write_json_atomic(args.json, {"rows": rows, "summary": summary})
    figure(rows, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
