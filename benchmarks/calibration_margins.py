#!/usr/bin/env python
"""The verdict's margins on the real calibration, read from asset/calibration_real.json alone
(no model is loaded).

    python benchmarks/calibration_margins.py [--json asset/calibration_margins.json]

Per witness (and per summary of the library's first pass): its bar, the closest unrelated
value, the weakest derived value and the counts on each side. Every derived pair counts for
every witness: a witness that fails on a derived pair, or cannot run on it, is a data point of
that witness, not a pair left out (a redrawn embedding is a failure of the embedding's
witnesses that the body's witnesses make up for).

Leave one family out: for each family, each witness's bar is set again from the pairs that
involve none of its models, and the family's own pairs are scored against it. The rule that
sets a bar: take the closest unrelated value and every derived value beyond it; the bar is the
midpoint of the widest gap between consecutive values among them. It keeps every unrelated pair
of the other families out, and it lets the data say where derived pairs separate: derived
values just beyond the unrelated ones (a witness failing on a derivation it cannot see) do not
pull the bar down to them. No unrelated or no derived value beyond it: no bar.

Last, the words: which unrelated pairs the verdict now calls "no evidence of derivation"
instead of "independent", because some derivation their depths allow was seen by no witness
that ran on them (awm.witnesses.verdict.unseen).
"""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from awm.atomic import write_json_atomic  # noqa: E402
from awm.library import fingerprint  # noqa: E402
from awm.witnesses import circuit_spectra  # noqa: E402
from awm.witnesses import verdict as rule  # noqa: E402

# The calibration's models by family (a child belongs to its parent's); the first match wins.
FAMILIES = (("smollm2", "SmolLM2-135M"), ("demo-", "SmolLM2-135M"), ("gemma", "Gemma-3-270m"),
            ("qwen15", "Qwen2.5-Coder-1.5B"), ("qwen", "Qwen2.5-Coder-0.5B"))
# Layers of each model (the parent's unless named): what the coverage of the witnesses depends on.
DEPTHS = {"smollm2": 30, "gemma": 18, "qwen05": 24, "qwen15": 28, "qwen-depth-pruned": 18, "smollm2-depth-pruned": 20}
THIN = 5                     # a margin resting on fewer real pairs than this is flagged


def family(model):
    return next(name for prefix, name in FAMILIES if model.startswith(prefix))


def depth(model):
    return DEPTHS.get(model) or DEPTHS[{"SmolLM2-135M": "smollm2", "Qwen2.5-Coder-0.5B": "qwen05"}[family(model)]]


def _test(name):
    return lambda row: row["witnesses"][name]


def _passes_test(name):
    def passes(row):
        test = row["witnesses"][name]
        return test is not None and test["p_value"] <= rule.CORRESPONDENCE_P and test["agreement"] >= rule.MIN_AGREEMENT[name]
    return passes


# (name, measure, derived side: "above" or "below" the bar, the bar, value of a row (None: could
# not run), whether the row passes by the full rule, the letter of the derivations it is built
# to see in the rows' "kept" (calibrate_real.py), or None for the first pass's summaries)
MEASURES = [
    *[(name, "agreement", "above", rule.MIN_AGREEMENT[name], (lambda n: lambda row: (_test(n)(row) or {}).get("agreement"))(name),
       _passes_test(name), letter) for name, letter in ((rule.EMBEDDING_PERMUTATION, "P"), (rule.EMBEDDING_ROTATION, "R"),
                                                        (rule.BODY_PERMUTATION, "B"))],
    (rule.CIRCUIT_SPECTRA, "mean log difference", "below", circuit_spectra.COPY_DISTANCE,
     lambda row: (_test(rule.CIRCUIT_SPECTRA)(row) or {}).get("distance"),
     lambda row: bool((_test(rule.CIRCUIT_SPECTRA)(row) or {}).get("confirmed")), "S"),
    ("first pass: anchor geometry", "correlation", "above", fingerprint.EMBEDDING_INHERITED,
     lambda row: row["first_pass"]["embedding"], None, None),
    ("first pass: anchor columns", "median best |cos|", "above", fingerprint.COLUMNS_INHERITED,
     lambda row: row["first_pass"]["columns"], None, None),
    ("first pass: layer spectra", "mean difference", "below", fingerprint.BODY_CANDIDATE,
     lambda row: row["first_pass"]["body"], None, None),
]


def pair_name(row):
    return f"{row['a']} vs {row['b']}"


def _beyond(value, bar, side):
    """On the derived side of the bar (at the bar counts as derived, as the rule has it)."""
    return value >= bar if side == "above" else value <= bar


def margins(rows, measure):
    name, what, side, bar, value, passes, letter = measure
    passes = passes or (lambda row: value(row) is not None and _beyond(value(row), bar, side))
    closest = max if side == "above" else min
    weakest = min if side == "above" else max
    unrelated = [r for r in rows if r["label"] == "independent" and value(r) is not None]
    derived = [r for r in rows if r["label"] == "derived"]
    measured = [r for r in derived if value(r) is not None]
    passing = [r for r in measured if passes(r)]
    near = closest(unrelated, key=value) if unrelated else None
    weak = weakest(measured, key=value) if measured else None
    weak_pass = weakest(passing, key=value) if passing else None
    found = {
        "measure": what, "derived_side": side, "bar": bar,
        "unrelated": {"pairs": len(unrelated), "distinct_family_pairs": len({frozenset(map(family, (r["a"], r["b"]))) for r in unrelated}),
                      "not_run": sum(r["label"] == "independent" and value(r) is None for r in rows),
                      "closest": None if near is None else value(near), "closest_pair": None if near is None else pair_name(near),
                      "passing": [pair_name(r) for r in unrelated if passes(r)]},
        "derived": {"pairs": len(derived), "measured": len(measured), "passing": len(passing),
                    "parent_families": len({family(r["a"]) for r in passing}),
                    "weakest": None if weak is None else value(weak), "weakest_pair": None if weak is None else pair_name(weak),
                    "weakest_passing": None if weak_pass is None else value(weak_pass),
                    "weakest_passing_pair": None if weak_pass is None else pair_name(weak_pass),
                    "failing": [f"{pair_name(r)}: {value(r)} ({r['what']})" for r in measured if not passes(r)],
                    "not_run": [f"{pair_name(r)} ({r['what']})" for r in derived if value(r) is None]},
    }
    if letter is not None:
        found["derived"]["failing_of_its_kind"] = [pair_name(r) for r in derived if letter in r["kept"] and not passes(r)]
    found["margin"] = {"bar_minus_closest_unrelated": _gap(bar, found["unrelated"]["closest"], side),
                       "weakest_passing_minus_bar": _gap(found["derived"]["weakest_passing"], bar, side)}
    found["thin"] = thin(found)
    return found


def _gap(derived_side, unrelated_side, side):
    if derived_side is None or unrelated_side is None:
        return None
    return round((derived_side - unrelated_side) if side == "above" else (unrelated_side - derived_side), 4)


def thin(found):
    """Where the margin rests on fewer than THIN real pairs."""
    notes = []
    if found["unrelated"]["pairs"] < THIN:
        notes.append(f"unrelated side: {found['unrelated']['pairs']} real pair(s)")
    elif found["unrelated"]["distinct_family_pairs"] < THIN:
        notes.append(f"unrelated side: {found['unrelated']['distinct_family_pairs']} distinct pairs of families")
    if found["derived"]["passing"] < THIN:
        notes.append(f"derived side: {found['derived']['passing']} passing real pair(s)")
    if found["derived"]["parent_families"] < THIN:
        notes.append(f"derived side: children of {found['derived']['parent_families']} parent(s)")
    return notes


def lofo_bar(rows, measure):
    """The bar the other families' pairs set (module docstring), or None."""
    _, _, side, _, value, _, _ = measure
    unrelated = [value(r) for r in rows if r["label"] == "independent" and value(r) is not None]
    derived = [value(r) for r in rows if r["label"] == "derived" and value(r) is not None]
    if not unrelated:
        return None
    near = max(unrelated) if side == "above" else min(unrelated)
    beyond = [v for v in derived if (v > near if side == "above" else v < near)]
    if not beyond:
        return None
    values = sorted([near, *beyond])
    low, high = max(zip(values, values[1:]), key=lambda gap: gap[1] - gap[0])
    return round((low + high) / 2, 4)


def errors(rows, measure, bar):
    """(unrelated pairs on the derived side, derived pairs not on it or not run) at this bar."""
    _, _, side, _, value, _, _ = measure
    if bar is None:
        return None
    false = [pair_name(r) for r in rows if r["label"] == "independent" and value(r) is not None and _beyond(value(r), bar, side)]
    missed = [pair_name(r) for r in rows if r["label"] == "derived" and (value(r) is None or not _beyond(value(r), bar, side))]
    return {"false_passes": false, "misses": missed}


def leave_one_family_out(rows, measure):
    table = {}
    for held in sorted({family(m) for r in rows for m in (r["a"], r["b"])}):
        inside = [r for r in rows if held in (family(r["a"]), family(r["b"]))]
        others = [r for r in rows if r not in inside]
        bar = lofo_bar(others, measure)
        at_bar, at_lofo = errors(inside, measure, measure[3]), errors(inside, measure, bar)
        letter = measure[6]
        of_kind = {pair_name(r) for r in inside if letter is not None and letter in r["kept"]}
        table[held] = {"pairs": len(inside), "unrelated": sum(r["label"] == "independent" for r in inside),
                       "derived": sum(r["label"] == "derived" for r in inside), "bar_from_others": bar,
                       "errors_at_that_bar": at_lofo, "errors_at_the_bar": at_bar,
                       "misses_of_its_kind_at_that_bar": None if at_lofo is None or letter is None
                       else sorted(of_kind & set(at_lofo["misses"]))}
    return table


def words(rows):
    """Unrelated pairs whose "independent" the coverage rule turns into "no evidence of derivation"."""
    changed, kept = [], []
    for row in rows:
        if row["label"] != "independent":
            continue
        tests = row["witnesses"]
        spectra = tests[rule.CIRCUIT_SPECTRA]
        depths = (depth(row["a"]), depth(row["b"]))
        if (spectra is not None) != (depths[0] == depths[1]):
            raise ValueError(f"{pair_name(row)}: the depths table disagrees with the stored spectra")
        # Every witness was asked on these rows (calibrate_real.py), as the verdict asks them when none passes.
        alignment = {"basis": None, "witnesses": [{"witness": name, **test} for name, test in tests.items()
                                                  if name != rule.CIRCUIT_SPECTRA and test is not None]}
        missed = rule.unseen(alignment, spectra, depths)
        now = rule.NO_EVIDENCE if row["verdict"] == "independent" and missed else row["verdict"]
        entry = {"pair": pair_name(row), "families": sorted({family(row["a"]), family(row["b"])}), "depths": list(depths),
                 "stored": row["verdict"], "now": now, "unseen": missed}
        (changed if now != row["verdict"] else kept).append(entry)
    distinct = lambda entries: sorted({" vs ".join(e["families"]) for e in entries})
    return {"changed": changed, "unchanged": kept, "distinct_family_pairs_changed": distinct(changed),
            "distinct_family_pairs_unchanged": distinct(kept)}


def summarize(rows):
    return {"source": "asset/calibration_real.json", "pairs": len(rows), "thin_below": THIN,
            "lofo_rule": "from the pairs of the other families: the closest unrelated value and every derived value beyond "
                         "it; the bar is the midpoint of the widest gap between consecutive values among them "
                         "(no unrelated or no derived value beyond it: no bar)",
            "witnesses": {m[0]: margins(rows, m) for m in MEASURES},
            "leave_one_family_out": {m[0]: leave_one_family_out(rows, m) for m in MEASURES},
            "words": words(rows)}


def _fmt(value):
    return "n/a" if value is None else f"{value:.4g}"


def report_lines(summary):
    lines = [f"{'witness':30s} {'bar':>7s} {'closest unrelated':>18s} {'n (families)':>13s} {'weakest derived':>16s} "
             f"{'weakest passing':>16s} {'derived pass/measured/all':>26s}  thin"]
    for name, m in summary["witnesses"].items():
        u, d = m["unrelated"], m["derived"]
        lines.append(f"{name:30s} {m['bar']:>7.4g} {_fmt(u['closest']):>18s} {u['pairs']:>6d} ({u['distinct_family_pairs']})    "
                     f"{_fmt(d['weakest']):>16s} {_fmt(d['weakest_passing']):>16s} {d['passing']:>12d}/{d['measured']}/{d['pairs']:<9d}  "
                     f"{'; '.join(m['thin']) or '-'}")
    lines.append("\nleave one family out (bar from the other families -> the family's false passes / misses; at the bar in use)")
    for name, table in summary["leave_one_family_out"].items():
        cells = []
        for held, found in table.items():
            lofo, now = found["errors_at_that_bar"], found["errors_at_the_bar"]
            at = "no bar" if lofo is None else f"{_fmt(found['bar_from_others'])}: {len(lofo['false_passes'])}/{len(lofo['misses'])}"
            cells.append(f"{held} {at} ({len(now['false_passes'])}/{len(now['misses'])})")
        lines.append(f"  {name:30s} " + "; ".join(cells))
    w = summary["words"]
    lines.append(f"\nunrelated pairs now 'no evidence of derivation': {len(w['changed'])} of {len(w['changed']) + len(w['unchanged'])} "
                 f"(distinct pairs of families: {', '.join(w['distinct_family_pairs_changed']) or 'none'}); "
                 f"still independent: {', '.join(e['pair'] for e in w['unchanged']) or 'none'}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", default=os.path.join(ROOT, "asset", "calibration_real.json"))
    parser.add_argument("--json", default=os.path.join(ROOT, "asset", "calibration_margins.json"))
    args = parser.parse_args()
    with open(args.calibration, encoding="utf-8") as handle:
        rows = json.load(handle)["rows"]
    summary = summarize(rows)
    print("\n".join(report_lines(summary)))
    write_json_atomic(args.json, json.loads(json.dumps(summary, default=_plain)))
    return 0


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


if __name__ == "__main__":
    sys.exit(main())
