#!/usr/bin/env python
"""Cost of the fingerprint library on checkpoints shaped like real models.

    python benchmarks/library_benchmark.py --preset llama2-7b --entries 8

The exact stage's cost: entries added with their kernels (--exact), every entry scored.

Writes the benchmark's synthetic models (benchmarks/benchmark.py: every tensor of the real
architecture): a base, then alternately independent models and derived siblings of the base
(fine-tuned copies, hidden dims permuted), up to `--entries`, and a derived suspect. Then it
measures in fresh processes: adding the entries (time, size on disk per entry), identifying
the suspect against all of them (time, peak memory, each pair's phases) and scoring the same
pairs from the weights (`--weights_pairs` of them; all by default). It checks that identify's
scores equal the scores from the weights and prints identify's total time against the pairs'.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

MEASURE = """
import json, sys, time
sys.path[:0] = {paths!r}
import awm, benchmark, torch
from awm.library import identification
from awm.library import folder as library
from awm.library import tasks as library_tasks
from awm.devices import set_threads
from awm.witnesses.verdict import load_reference
set_threads({threads})
started = time.perf_counter()
result = {call}
elapsed = time.perf_counter() - started
print(json.dumps({{"seconds": elapsed, "peak_rss_mb": benchmark.peak_rss_mb(), "result": result}}))
"""


def in_fresh_process(call, threads):
    code = MEASURE.format(paths=[ROOT, os.path.join(ROOT, "tests")], threads=threads, call=call)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(folder) for n in names)


def extra_roles(count):
    """(role, seed) of the entries after the base and the first independent model."""
    return [("sibling" if k % 2 == 0 else "independent", 4 + k) for k in range(max(0, count - 2))]


def entry_model(args, role, seed):
    """An independent model, or a derived sibling of the base (fine-tuning noise of its own,
    its own permutation of the hidden dims), written once."""
    import benchmark
    from factory import byte_level_tokens

    path = os.path.join(args.dir, args.preset, f"{role}-{seed}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        preset = benchmark.PRESETS[args.preset]
        parent = benchmark.SyntheticModel(preset, seed=1) if role == "sibling" else None
        benchmark.write_model(path, preset, benchmark.SyntheticModel(preset, seed=seed, derived_from=parent), byte_level_tokens(preset["vocab"], seed=5))
    return path


def main():
    import benchmark

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama2-7b", choices=sorted(benchmark.PRESETS))
    parser.add_argument("--entries", type=int, default=8, help="library entries: the base, then independent models and derived siblings in turn")
    parser.add_argument("--weights_pairs", type=int, help="score only the first N pairs from the weights too (default: all)")
    parser.add_argument("--dir", default=os.path.join(ROOT, "bench_out"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()

    paths = benchmark.prepare(args.preset, args.dir)
    entries = [paths["base"], paths["independent"]] + [entry_model(args, role, seed) for role, seed in extra_roles(args.entries)]
    entries = entries[:args.entries]
    library = os.path.join(args.dir, f"library-{args.preset}")
    shutil.rmtree(library, ignore_errors=True)
    device = "torch.device('cpu')"
    # Exact entries, every entry scored: the exact stage's own cost (benchmarks/reference_library.py
    # measures the first pass and compact entries).
    added = in_fresh_process(f"library_tasks.add_models({entries!r}, {library!r}, library_tasks.options(), {device}, exact=True)", args.threads)
    sizes = {n: folder_bytes(os.path.join(library, n)) for n in os.listdir(library) if os.path.isdir(os.path.join(library, n)) and not n.startswith(".")}
    suspect = in_fresh_process(f"library.Library({library!r}).add({paths['derived']!r}, library_tasks.options(), {device}, suspect=True)", args.threads)
    found = in_fresh_process(f"identification.identify({paths['derived']!r}, {library!r}, library_tasks.options(), {device}, "
                             "load_reference(None), exhaustive=True)", args.threads)
    weighed = entries[:args.weights_pairs or len(entries)]
    from_weights = [in_fresh_process(f"awm.compare({paths['derived']!r}, {e!r}, device='cpu').to_dict()", args.threads) for e in weighed]

    matches = {m["model_b"]["name"]: m for m in found["result"]["matches"]}
    scores_identify = {n: m["scores"] for n, m in matches.items()}
    scores_weights = {os.path.basename(e): r["result"]["scores"] for e, r in zip(weighed, from_weights)}
    pair_seconds = [r["seconds"] for r in from_weights]
    mean_pair = sum(pair_seconds) / len(pair_seconds)
    identify_seconds = suspect["seconds"] + found["seconds"]     # digesting the suspect, then every entry
    summary = {
        "preset": args.preset, "entries": len(entries), "threads": args.threads,
        "add_seconds": round(added["seconds"], 1), "entry_bytes": sizes,
        "identify_seconds": round(identify_seconds, 1),
        "identify_peak_rss_mb": round(max(suspect["peak_rss_mb"], found["peak_rss_mb"])),
        "suspect_digest_seconds": round(suspect["seconds"], 1),
        "identify_seconds_after_digest": round(found["seconds"], 1),
        "identify_seconds_per_entry": round(found["seconds"] / len(entries), 1),
        "identify_phases_per_entry": {n: m["timings"] for n, m in matches.items()},
        "verdicts": {n: m["verdict"] for n, m in matches.items()},
        "pair_from_weights_seconds": [round(s, 1) for s in pair_seconds],
        "pair_from_weights_peak_rss_mb": [round(r["peak_rss_mb"]) for r in from_weights],
        "identify_vs_weights_ratio": round(identify_seconds / (len(entries) * mean_pair), 3),
        "scores_identify": scores_identify, "scores_weights": scores_weights,
        "scores_equal": all(scores_identify[n] == scores_weights[n] for n in scores_weights),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(summary, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
