#!/usr/bin/env python
"""Calibration of the verdict on real trained models: false positives, misses, the test's level.

    python benchmarks/calibration_zoo.py     # once: builds the models (about an hour, cached)
    python benchmarks/calibrate_verdict.py [--json asset/calibration.json] [--figure asset/calibration]

Scores every labelled pair of the zoo (independent by construction, or derived by a known
operation) and reports: each pair's scores, correspondence test and verdict; the confusion
table of verdicts; and the correspondence test's empirical per-dim false-match rate on the
independent pairs against its nominal level.
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
from awm import demo, evaluation, gguf_convert, verdict  # noqa: E402
from awm.atomic import write_json_atomic  # noqa: E402
from awm.digest import digest_path  # noqa: E402
from awm.pair import compare_digests  # noqa: E402

from awm import similarity_metrics as sm  # noqa: E402

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
]


def labelled_pairs():
    independent = [(a, b, "independent scratch models") for a, b in itertools.combinations(SCRATCH, 2)]
    independent += [("smollm2", s, "SmolLM2 vs a scratch model") for s in SCRATCH]
    independent += [(f, o, "fresh initialisation") for f in FRESH for o in ["smollm2"] + SCRATCH]
    return [(a, b, why, "independent") for a, b, why in independent] + [(a, b, why, "derived") for a, b, why in DERIVED]


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
        test = result["evidence"]["correspondence"]
        rows.append({"a": a, "b": b, "what": why, "label": label, "verdict": result["verdict"],
                     "final": result["scores"]["final"], "qk_circuit": result["scores"]["qk_circuit"],
                     "z_score": result["scores"]["z_score"], "residual": result["residual_scores"],
                     "mean_abs_cosine": result["evidence"]["mean_abs_cosine"], "correspondence": test,
                     "reason": result["verdict_reason"]})
        print(f"  {label:11s} {a:22s} {b:24s} AWM {rows[-1]['final']:7.2f} %  circuit {rows[-1]['qk_circuit']:7.2f} %  "
              f"|cos| {rows[-1]['mean_abs_cosine']:.3f}  matched {test['matched_dims']:4d}/{test['target_dims']:<4d} "
              f"p {test['p_value']:<8.2g} -> {result['verdict']}", flush=True)
    return rows


def summarize(rows):
    confusion = evaluation.verdict_confusion(rows)
    independent = [r for r in rows if r["label"] == "independent"]
    false_matches = sum(r["correspondence"]["matched_dims"] for r in independent)
    tested = sum(r["correspondence"]["target_dims"] for r in independent)
    return {
        "confusion": confusion,
        "old_rule_false_positives": sum(r["z_score"] >= verdict.DERIVED_Z for r in independent),
        "independent_pairs": len(independent),
        "correspondence_false_matches": false_matches,
        "correspondence_dims_tested": tested,
        "correspondence_nominal_rate": sm.CORRESPONDENCE_ALPHA,
        "correspondence_empirical_rate": false_matches / tested if tested else None,
        "independent_pairs_below_p": sum(r["correspondence"]["p_value"] <= verdict.CORRESPONDENCE_P for r in independent),
    }


def figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = {"independent": "tab:blue", "derived": "tab:red"}
    for r in rows:
        frac = max(r["correspondence"]["fraction"], 1e-3)
        axes[0].scatter(frac, max(r["final"], 1e-2), c=colors[r["label"]], s=28,
                        marker="x" if r["verdict"] == "derived" else "o" if r["verdict"] == "independent" else "s")
        axes[1].scatter(max(r["final"], 1e-2), max(r["residual"]["final"], 1e-2), c=colors[r["label"]], s=28)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
    axes[0].set_xlabel("fraction of dims matched one to one (correspondence test)")
    axes[0].set_ylabel("AWM score (%)")
    axes[0].set_title("o independent, x derived, square inconclusive (verdict)")
    axes[1].set_xlabel("AWM score (%)")
    axes[1].set_ylabel("AWM score without shared directions (%)")
    axes[1].set_title("blue: independent pairs, red: derived pairs")
    limit = verdict.PAPER_NULL["mean"] + verdict.DERIVED_Z * verdict.PAPER_NULL["std"]
    for ax in axes:
        ax.axhline(limit, color="grey", lw=0.8, ls="--")
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
    print(json.dumps(summary, indent=1))
    write_json_atomic(args.json, {"rows": rows, "summary": summary})
    figure(rows, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
