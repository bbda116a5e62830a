#!/usr/bin/env python
"""Cost of the fingerprint library on checkpoints shaped like real models.

    python tests/library_benchmark.py --preset llama2-7b --entries 2

Writes the benchmark's synthetic models (tests/benchmark.py: every tensor of the real
architecture; a base, `entries - 1` independent models and a derived suspect), then measures
in fresh processes: adding the entries (time, size on disk per entry), identifying the suspect
against them (time, peak memory), and scoring the same pairs from the weights. It checks that
identify's scores equal the scores from the weights, and prints the per-entry costs with the
ratio they give for a library of 8 entries.
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
import json, resource, sys, time
sys.path[:0] = {paths!r}
import awm, identify, torch
awm.set_threads({threads})
started = time.perf_counter()
result = {call}
elapsed = time.perf_counter() - started
print(json.dumps({{"seconds": elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "result": result}}))
"""


def in_fresh_process(call, threads):
    code = MEASURE.format(paths=[ROOT, os.path.join(ROOT, "tests")], threads=threads, call=call)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def folder_bytes(folder):
    return sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(folder) for n in names)


def main():
    import benchmark

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="llama2-7b", choices=sorted(benchmark.PRESETS))
    parser.add_argument("--entries", type=int, default=2, help="library entries: the base + independent models")
    parser.add_argument("--dir", default=os.path.join(ROOT, "bench_out"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()

    paths = benchmark.prepare(args.preset, args.dir)
    entries = [paths["base"], paths["independent"]]
    for seed in range(4, 4 + args.entries - 2):     # more independent models, when asked for
        extra = os.path.join(args.dir, args.preset, f"independent-{seed}")
        if not os.path.isfile(os.path.join(extra, "config.json")):
            from factory import byte_level_tokens

            preset = benchmark.PRESETS[args.preset]
            benchmark.write_model(extra, preset, benchmark.SyntheticModel(preset, seed=seed), byte_level_tokens(preset["vocab"], seed=5))
        entries.append(extra)
    entries = entries[:args.entries]
    library = os.path.join(args.dir, f"library-{args.preset}")
    shutil.rmtree(library, ignore_errors=True)
    device = "torch.device('cpu')"
    added = in_fresh_process(f"identify.add_models({entries!r}, {library!r}, identify.options(), {device})", args.threads)
    sizes = {n: folder_bytes(os.path.join(library, n)) for n in os.listdir(library) if os.path.isdir(os.path.join(library, n)) and not n.startswith(".")}
    suspect = in_fresh_process(f"identify.Library({library!r}).add({paths['derived']!r}, identify.options(), {device}, suspect=True)", args.threads)
    found = in_fresh_process(f"identify.identify({paths['derived']!r}, {library!r}, identify.options(), {device}, awm.load_null(None))", args.threads)
    from_weights = [in_fresh_process(f"awm.compare({paths['derived']!r}, {e!r}, device='cpu').to_dict()", args.threads) for e in entries]

    scores_identify = {m["model_b"]["name"]: m["scores"] for m in found["result"]["matches"]}
    scores_weights = {os.path.basename(e): r["result"]["scores"] for e, r in zip(entries, from_weights)}
    pair_seconds = [r["seconds"] for r in from_weights]
    suspect_seconds = suspect["seconds"]            # digesting the suspect, once per identify
    per_entry = found["seconds"] / len(entries)     # then each entry (the suspect's digest reused)
    ratio_8 = (suspect_seconds + 8 * per_entry) / (8 * sum(pair_seconds) / len(pair_seconds))
    summary = {
        "preset": args.preset, "entries": len(entries), "threads": args.threads,
        "add_seconds": round(added["seconds"], 1), "entry_bytes": sizes,
        "identify_seconds": round(suspect_seconds + found["seconds"], 1),
        "identify_peak_rss_mb": round(max(suspect["peak_rss_mb"], found["peak_rss_mb"])),
        "suspect_digest_seconds": round(suspect_seconds, 1), "identify_seconds_per_entry": round(per_entry, 1),
        "pair_from_weights_seconds": [round(s, 1) for s in pair_seconds],
        "pair_from_weights_peak_rss_mb": [round(r["peak_rss_mb"]) for r in from_weights],
        "identify_vs_weights_ratio_for_8_entries": round(ratio_8, 3),
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
