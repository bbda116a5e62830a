#!/usr/bin/env python
"""The reference library at scale: entry sizes, the first pass's cost and recall, and identify
against a library of a thousand entries.

    python benchmarks/reference_library.py --root /work/zoo --dir bench_out/reference
        [--families 50] [--json asset/reference_library.json]

Four measurements:
- sizes: a compact entry (fingerprint + record) and an exact one for models shaped like
  Llama-3.2-1B, Llama-2-7B, Llama-3-8B and Llama-3-70B, against the model's weight bytes;
  the compact size is the fingerprint's layout, checked against entries built here;
- first pass per entry: reading a fingerprint and comparing it, for fingerprints of real
  shape (16, 32 and 80 layers, every anchor present);
- recall on the calibration zoo (benchmarks/calibration_zoo.py): every labelled pair's first
  pass; derived pairs must all be candidates, independent ones that are candidates counted;
- identify at scale: `--families` families of 20 small models each (a base; fine-tunes;
  width- and depth-pruned, embedding-redrawn, rotated and weakly derived children) added as
  exact entries; suspects (new children of some bases, new independent models) identified in
  two stages and exhaustively (every entry scored from its kernels, as before the first pass
  existed): times, their ratio, and whether the final answers agree.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "benchmarks")]

import benchmark  # noqa: E402
import factory  # noqa: E402
import surgery  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from awm.atomic import write_json_atomic  # noqa: E402
from awm.library import entry as library_entry  # noqa: E402
from awm.library import (
    fingerprint,  # noqa: E402
    identification,  # noqa: E402
)
from awm.library import tasks as library_tasks  # noqa: E402
from awm.library.folder import Library  # noqa: E402
from awm.witnesses.verdict import is_derived, load_reference  # noqa: E402

CPU = torch.device("cpu")
OPTIONS = library_tasks.options()
SIZE_PRESETS = ("llama3.2-1b", "llama2-7b", "llama3-8b", "llama3-70b")
HIDDEN, LAYERS, VOCAB = 64, 4, 900
# A family: the base, then its children by kind (20 models).
CHILDREN = ["tuned"] * 9 + ["pruned-width", "pruned-depth", "redrawn", "rotated", "weak"] * 2
DTYPE_BYTES = {"F16": 2, "BF16": 2}


# ----------------------------------------------------------------------------- sizes
def weight_bytes(preset):
    p = benchmark.PRESETS[preset]
    return sum(torch.Size(shape).numel() for shape in benchmark.tensor_shapes(p).values()) * DTYPE_BYTES[p["dtype"]]


def kernel_bytes(preset):
    """An exact entry's kernels (library_entry.kernel_layout) without building them: the
    embedding and the raw W_q / W_k rows of four layers in their stored dtype, per layer the
    packed W_q and W_k Grams and the QK circuit in float32."""
    p = benchmark.PRESETS[preset]
    hidden, layers, head_dim = p["hidden"], p["layers"], p["hidden"] // p["heads"]
    packed = hidden * (hidden + 1) // 2
    rows = 4 * ((p["heads"] + p["kv"]) * head_dim * hidden * DTYPE_BYTES[p["dtype"]] + 4 * hidden)
    return DTYPE_BYTES[p["dtype"]] * p["vocab"] * hidden + 4 * layers * (2 * packed + hidden * hidden) + rows


def sizes(model, work):
    """Compact and exact entry bytes per preset: the compact one from the fingerprint's layout,
    with the header and record measured on an entry built here."""
    library = Library(os.path.join(work, "size-library"), create=True)
    built_entry = library.entry_path(library.add(model, OPTIONS, CPU)[0])
    record_bytes = os.path.getsize(os.path.join(built_entry, library_entry.DIGEST_FILE))
    held = library_entry.read_fingerprint(built_entry)
    file_bytes = os.path.getsize(os.path.join(built_entry, library_entry.FINGERPRINT_FILE))
    header = file_bytes - fingerprint.payload_bytes(len(held["anchors"]), len(held["anchor_columns"]), held["anchor_columns"].shape[1],
                                                    held["spectra"].shape[0])
    rows = []
    for preset in SIZE_PRESETS:
        p = benchmark.PRESETS[preset]
        compact = fingerprint.payload_bytes(len(fingerprint.ANCHORS), fingerprint.COLUMN_ANCHORS, p["hidden"], p["layers"]) + header + record_bytes
        weights = weight_bytes(preset)
        rows.append({"preset": preset, "weight_bytes": weights, "compact_bytes": compact,
                     "compact_percent": round(100 * compact / weights, 4), "exact_bytes": compact + kernel_bytes(preset),
                     "exact_percent": round(100 * (compact + kernel_bytes(preset)) / weights, 1)})
    return {"fingerprint_header_bytes": header, "record_bytes": record_bytes, "presets": rows}


# ----------------------------------------------------------------------------- first pass cost
def synthetic_fingerprint(layers, hidden, seed):
    generator = torch.Generator().manual_seed(seed)
    count = len(fingerprint.ANCHORS)
    rows = torch.randn(count, hidden, generator=generator)
    gram = torch.nn.functional.normalize(rows[:, :32], dim=1)
    spectra = -torch.rand(layers, 3, fingerprint.SPECTRUM, generator=generator).cumsum(2) * 0.1
    return {"anchors": torch.arange(count, dtype=torch.int16), "anchor_gram": fingerprint.pack_gram(gram @ gram.t()),
            "anchor_columns": fingerprint.pack_columns(rows[:fingerprint.COLUMN_ANCHORS]), "spectra": spectra}


def first_pass_cost(entries=200):
    """ms per entry to read a real-shaped fingerprint from disk and compare it."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for layers, hidden in ((16, 2048), (32, 4096), (80, 8192)):
            paths = []
            for k in range(entries):
                entry = os.path.join(folder, f"{layers}-{k}")
                os.makedirs(entry)
                save_file(synthetic_fingerprint(layers, hidden, k), os.path.join(entry, library_entry.FINGERPRINT_FILE))
                paths.append(entry)
            suspect = library_entry.read_fingerprint(paths[0])
            started = time.perf_counter()
            for entry in paths:
                fingerprint.first_pass(suspect, library_entry.read_fingerprint(entry))
            shallower = {**suspect, "spectra": suspect["spectra"][: layers // 2]}     # another depth: the layer assignment
            middle = time.perf_counter()
            for entry in paths:
                fingerprint.first_pass(shallower, library_entry.read_fingerprint(entry))
            done = time.perf_counter()
            rows.append({"layers": layers, "hidden": hidden, "entries": entries, "ms_per_entry_same_depth": round(1000 * (middle - started) / entries, 2),
                         "ms_per_entry_other_depth": round(1000 * (done - middle) / entries, 2)})
    return rows


# ----------------------------------------------------------------------------- recall on the zoo
def zoo_recall(root, work):
    import calibrate_verdict
    import calibration_zoo

    paths = calibrate_verdict.model_paths(calibration_zoo.Zoo(root))
    directory = os.path.join(work, "zoo-library")
    names = {path: name for name, path in paths.items()}
    library = Library(directory, create=True)
    for path, name in names.items():
        library.add(path, OPTIONS, CPU, name=name)
    fingerprints = {name: library_entry.read_fingerprint(library.entry_path(name)) for name in paths}
    rows = []
    for a, b, why, label in calibrate_verdict.labelled_pairs():
        evidence = fingerprint.first_pass(fingerprints[a], fingerprints[b])
        rows.append({"a": a, "b": b, "label": label, "why": why, **evidence})
    by_label = {}
    for row in rows:
        counts = by_label.setdefault(row["label"], {"pairs": 0, "candidates": 0})
        counts["pairs"] += 1
        counts["candidates"] += row["candidate"]
    return {"pairs": rows, "by_label": by_label, "missed_derived": [f"{r['a']} vs {r['b']}" for r in rows if r["label"] == "derived" and not r["candidate"]]}


# ----------------------------------------------------------------------------- identify at scale
def tuned(tensors, seed, amount):
    generator = torch.Generator().manual_seed(seed)
    return {k: v + amount * v.std() * torch.randn(v.shape, generator=generator) for k, v in tensors.items()}


def child(base, kind, seed):
    """(tensors, config changes) of one derived model."""
    if kind == "tuned":
        return tuned(base, seed, 0.02 + 0.01 * (seed % 5)), {}
    if kind == "pruned-width":
        keep = torch.randperm(HIDDEN, generator=torch.Generator().manual_seed(seed))[:48].sort().values
        return surgery.prune_hidden(base, keep), {"hidden_size": 48, "head_dim": HIDDEN // 4}
    if kind == "pruned-depth":
        pruned, depth = surgery.drop_layers(base, [seed % LAYERS])
        return pruned, {"num_hidden_layers": depth}
    if kind == "redrawn":
        return surgery.redraw_embedding(base, torch.Generator().manual_seed(seed)), {}
    if kind == "rotated":
        return surgery.rotate_residual(base, seed), {}
    return surgery.weak_positive(base, LAYERS, keep=0.3, seed=seed), {}


def write(folder, tensors, changes, tokens):
    if not os.path.isfile(os.path.join(folder, "config.json")):
        factory.write_safetensors_model(folder, tensors, {**factory.llama_config(HIDDEN, LAYERS, 4, 2, VOCAB), **changes}, tokens)
    return folder


def scale_models(work, families):
    tokens = factory.anchored_tokens(VOCAB)
    models, bases = [], {}
    for family in range(families):
        base = factory.structured_llama_tensors(hidden=HIDDEN, layers=LAYERS, vocab=VOCAB, seed=1000 + family)
        bases[family] = base
        models.append(write(os.path.join(work, "models", f"f{family:03d}-base"), base, {}, tokens))
        for number, kind in enumerate(CHILDREN, 1):
            models.append(write(os.path.join(work, "models", f"f{family:03d}-{number:02d}-{kind}"), *child(base, kind, 7919 * family + number), tokens))
    suspects = {}
    for family, kind in ((0, "tuned"), (1, "redrawn"), (2, "rotated"), (3, "pruned-width")):
        suspects[f"suspect-f{family:03d}-{kind}"] = write(os.path.join(work, "suspects", f"f{family:03d}-{kind}"),
                                                        *child(bases[family], kind, 555 + family), tokens)
    for seed in (1, 2):
        suspects[f"suspect-independent-{seed}"] = write(os.path.join(work, "suspects", f"independent-{seed}"),
                                                      factory.structured_llama_tensors(hidden=HIDDEN, layers=LAYERS, vocab=VOCAB, seed=5000 + seed), {}, tokens)
    return models, suspects


def derived_answer(result):
    return sorted((r["model_b"]["name"], r["verdict"]) for r in result["matches"] if is_derived(r["verdict"]))


def identify_at_scale(work, families, exhaustive_suspects):
    models, suspects = scale_models(work, families)
    directory = os.path.join(work, f"library-{len(models)}")
    started = time.perf_counter()
    outcomes = library_tasks.add_models(models, directory, OPTIONS, CPU, exact=True)
    add_seconds = time.perf_counter() - started
    failed = [o for o in outcomes if "error" in o]
    library = Library(directory)
    entries = library.entries()
    rows = []
    for name, path in suspects.items():
        shutil.rmtree(os.path.join(directory, ".pairs"), ignore_errors=True)
        started = time.perf_counter()
        staged = identification.identify(path, directory, OPTIONS, CPU, load_reference(None))
        staged_seconds = time.perf_counter() - started
        linked = sum("via" in r["first_pass"] for r in staged["matches"] + staged["first_pass_only"])
        row = {"suspect": name, "entries": len(entries), "staged_seconds": round(staged_seconds, 1),
               "first_pass_candidates": len(staged["matches"]) + len(staged["first_pass_only"]) - linked,
               "through_relatives": linked, "ruled_out": len(staged["ruled_out"]),
               "not_compared": len(staged["not_compared"]), "derived_found": len(derived_answer(staged)),
               "best_match": next((r["model_b"]["name"] for r in staged["matches"] if is_derived(r["verdict"])), None)}
        if exhaustive_suspects is None or name in exhaustive_suspects:
            shutil.rmtree(os.path.join(directory, ".pairs"), ignore_errors=True)
            started = time.perf_counter()
            everything = identification.identify(path, directory, OPTIONS, CPU, load_reference(None), exhaustive=True)
            row["exhaustive_seconds"] = round(time.perf_counter() - started, 1)
            row["ratio"] = round(staged_seconds / row["exhaustive_seconds"], 4)
            row["same_answer"] = derived_answer(staged) == derived_answer(everything) and staged["placement"] == everything["placement"]
            row["derived_missed"] = sorted(set(derived_answer(everything)) - set(derived_answer(staged)))
        print(json.dumps(row), flush=True)
        rows.append(row)
    screen_started = time.perf_counter()
    screening_suspect = next(iter(suspects))
    from awm.library.screening import screen

    suspect_name = os.path.basename(suspects[screening_suspect])
    screen(library, suspect_name, entries, OPTIONS)
    screen_seconds = time.perf_counter() - screen_started
    return {"families": families, "entries": len(entries), "add_seconds": round(add_seconds, 1), "failed": failed,
            "first_pass_seconds": round(screen_seconds, 2), "first_pass_ms_per_entry": round(1000 * screen_seconds / len(entries), 2),
            "suspects": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", help="the calibration zoo (benchmarks/calibration_zoo.py --root); without it, no recall on the zoo")
    parser.add_argument("--dir", default=os.path.join(ROOT, "bench_out", "reference"))
    parser.add_argument("--families", type=int, default=50, help="families of 20 small models in the library (default 50: 1,000 entries)")
    parser.add_argument("--exhaustive", nargs="*", help="the suspects also identified exhaustively (every entry scored), "
                                                        "for the ratio and the answer (default: all)")
    parser.add_argument("--json", default=os.path.join(ROOT, "asset", "reference_library.json"))
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    result = {"first_pass_cost": first_pass_cost()}
    print(json.dumps(result["first_pass_cost"]), flush=True)
    result["scale"] = identify_at_scale(args.dir, args.families, args.exhaustive)
    result["sizes"] = sizes(os.path.join(args.dir, "models", "f000-base"), args.dir)
    print(json.dumps(result["sizes"], indent=1), flush=True)
    if args.root:
        result["zoo_recall"] = zoo_recall(args.root, args.dir)
        print(json.dumps({k: v for k, v in result["zoo_recall"].items() if k != "pairs"}, indent=1), flush=True)
    write_json_atomic(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
