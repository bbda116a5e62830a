"""What a run of many pairs leaves on disk: scores.json, scores.csv, table.md, null_stats.json,
and the figures (per-layer curves, heatmap, lineage map, ROC)."""
import csv
import io
import os
import re

from awm.atomic import write_json_atomic, write_text_atomic
from awm.suites import evaluation, plots
from awm.suites.provenance_kit import DIFFICULTIES
from awm.tree import hub_cards
from awm.version import VERSION
from awm.witnesses.verdict import VERDICTS

HEATMAP_MIN_MODELS = 4
LINEAGE_MIN_MODELS = 3


def suite_metrics(records):
    """ROC metrics of the AWM and QK-circuit scores over the labelled pairs (when both labels occur)."""
    labelled = [r for r in records if r["label"] in ("derived", "independent")]
    truth = [int(r["label"] == "derived") for r in labelled]
    found = {}
    for key in ("final", "qk_circuit"):
        values = [r["scores"][key] for r in labelled]
        if labelled and None not in values:
            found[key] = evaluation.detection_metrics(values, truth)
    return {k: v for k, v in found.items() if v}


def verdicts_by_difficulty(records):
    """Right verdicts per difficulty of a benchmark's pairs (empty when no pair has one)."""
    return evaluation.verdicts_by(records, "difficulty", DIFFICULTIES)


def null_stats(records, run_name):
    """Mean and std of the run's independent pairs: a reference to pass as --null_stats."""
    independent = [r for r in records if r["label"] == "independent"]
    stats = evaluation.null_statistics([r["scores"]["final"] for r in independent])
    if stats is None:
        return None
    circuit = evaluation.null_statistics([r["scores"]["qk_circuit"] for r in independent])
    return {**stats, "qk_circuit": circuit, "source": f"independent pairs of suite run '{run_name}'"}


def write_tables(run, final=False):
    """scores.json, scores.csv, table.md and null_stats.json of a run, each replaced atomically."""
    records = run.records
    summary = {
        "tool": "awm", "version": VERSION, "run": run.name, "reference": run.null,
        "complete": final and len(records) + len(run.skipped) + len(run.ruled_out) == len(run.pairs),
        "pairs": records, "skipped": run.skipped, "ruled_out": run.ruled_out,
        "metrics": {k: {m: v for m, v in d.items() if m not in ("fpr", "tpr")} for k, d in suite_metrics(records).items()},
        "verdict_confusion": evaluation.verdict_confusion(records),
        "verdicts_by_difficulty": verdicts_by_difficulty(records),
        "left_out": run.left_out,
        "model_reads": {os.path.basename(p): n for p, n in run.model_reads.items()},
        "resumed_pairs": run.resumed,
    }
    folder = run.results_dir
    write_json_atomic(os.path.join(folder, "scores.json"), summary)
    write_text_atomic(os.path.join(folder, "scores.csv"), csv_table(records))
    write_text_atomic(os.path.join(folder, "table.md"),
                      markdown_table(records, run.skipped, summary["metrics"], run.null, summary["verdict_confusion"], run.ruled_out)
                      + difficulty_markdown(summary["verdicts_by_difficulty"]) + left_out_markdown(run.left_out))
    stats = null_stats(records, run.name)
    if stats:
        write_json_atomic(os.path.join(folder, "null_stats.json"), stats)


def write_plots(folder, records, graph=None, linked_only=False):
    """Per-layer curves of every pair (`linked_only`: of the pairs the family tree links, as a
    library's map draws them: its other pairs are many and their curves are in scores.json);
    the heatmap, the family map (`graph`: lineage.json, with its tree) and ROC when the run has
    enough for them."""
    os.makedirs(os.path.join(folder, "layers"), exist_ok=True)
    linked = tree_links((graph or {}).get("tree")) if linked_only else None
    for record in records:
        if linked is None or frozenset((record["model_a"]["name"], record["model_b"]["name"])) in linked:
            plots.layer_curves(record, os.path.join(folder, "layers", safe_name(record["pair"])))
    models = {n for r in records for n in (r["model_a"]["name"], r["model_b"]["name"])}
    if len(models) >= HEATMAP_MIN_MODELS:
        plots.score_heatmap(records, os.path.join(folder, "heatmap"))
    if graph is not None:
        write_json_atomic(os.path.join(folder, "lineage.json"), graph)
        plots.lineage_figure(graph, os.path.join(folder, "lineage"))
        if graph.get("tree"):
            hub_cards.write_cards(os.path.join(folder, "cards"), graph["tree"], safe_name)
    curves = suite_metrics(records)
    if curves:
        plots.roc_figure({("AWM score" if k == "final" else "QK-circuit score"): v for k, v in curves.items()},
                         os.path.join(folder, "roc"))


def tree_links(tree):
    """The pairs a family tree links, parent and child or undirected, as sets of two names."""
    if not tree:
        return set()
    return ({frozenset((parent["name"], node["name"])) for node in tree["nodes"] for parent in node["parents"]}
            | {frozenset((pair["a"], pair["b"])) for pair in tree["undirected"]})


def safe_name(text):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


CSV_COLUMNS = ("pair", "suite", "category", "label", "wq", "wk", "final", "z_score", "qk_circuit", "verdict", "difficulty", "pair_id")


def csv_table(records):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for r in records:
        writer.writerow([r["pair"], r["suite"], r["category"], r["label"], *(r["scores"][k] for k in ("wq", "wk", "final", "z_score", "qk_circuit")),
                         r["verdict"], r.get("difficulty", ""), r.get("pair_id", "")])
    return buffer.getvalue()


def confusion_markdown(confusion):
    """The verdicts against the suite's labels, as a Markdown table with the two rates."""
    calls = VERDICTS[:-1]
    lines = ["| true label | " + " | ".join(calls) + " |", "|---|" + "---:|" * len(calls)]
    for label, row in confusion["counts"].items():
        lines.append(f"| {label} | " + " | ".join(str(row[c]) for c in calls) + " |")
    rate = lambda v: "n/a" if v is None else f"{v:.3f}"
    lines.append(f"\nVerdict: independent pairs called derived {rate(confusion['false_positive_rate'])}, "
                 f"derived pairs recognised {rate(confusion['true_positive_rate'])}.")
    return "\n".join(lines)


def markdown_table(records, skipped, metrics, null, confusion=None, ruled_out=()):
    cell = lambda v, fmt="{:.2f}": "n/a" if v is None else fmt.format(v)
    lines = ["| Pair | Category | Wq (%) | Wk (%) | Wq·Wk (%) | Z | QK-circuit (%) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        s = r["scores"]
        category = ", ".join(filter(None, (r["category"], r.get("difficulty"))))
        lines.append(f"| {r['pair']} | {category} | {cell(s['wq'])} | {cell(s['wk'])} | {cell(s['final'])} | "
                     f"{cell(s['z_score'], '{:.1f}')} | {cell(s['qk_circuit'])} |")
    lines.append(f"\nZ: |score - {null['mean']:.3f}| / {null['std']:.3f} ({null['name']} reference: {null['source']}).")
    for key, m in metrics.items():
        lines.append(f"\n{'AWM score' if key == 'final' else 'QK-circuit score'}: AUC {m['auc']:.3f}, pAUC (FPR <= {m['pauc_max_fpr']}) "
                     f"{m['pauc']:.3f}, TPR@{m['at_fpr']:.0%}FPR {m['tpr_at_fpr']:.3f} ({m['positives']} derived, {m['negatives']} independent).")
    if confusion and any(sum(row.values()) for row in confusion["counts"].values()):
        lines += ["", confusion_markdown(confusion)]
    if ruled_out:
        lines.append(f"\nScreened out by the first pass (compact fingerprints alone; no exact score, no verdict): {len(ruled_out)} pairs.")
    if skipped:
        lines.append("\nSkipped:")
        lines += [f"- {s['pair']}: {s['reason']}" for s in skipped]
    return "\n".join(lines) + "\n"


def difficulty_markdown(by_difficulty):
    """The verdicts per difficulty of a benchmark's pairs (empty when no pair has one)."""
    if not by_difficulty:
        return ""
    lines = ["", "Verdicts by difficulty:", "",
             "| difficulty | derived recognised | independent called independent | right |", "|---|---:|---:|---:|"]
    share = lambda n, of: f"{n}/{of}" if of else "-"
    for value, g in by_difficulty.items():
        lines.append(f"| {value} | {share(g['derived_recognised'], g['derived'])} | "
                     f"{share(g['independent_called_independent'], g['independent'])} | {g['accuracy']:.3f} |")
    return "\n".join(lines) + "\n"


def left_out_markdown(left_out):
    """The source's pairs awm cannot score, by name, with the reason."""
    if not left_out:
        return ""
    lines = ["", f"Left out ({len(left_out)} pairs awm cannot score):"]
    lines += [f"- {e['pair_id']} {e['pair']} ({e['label']}, {e['difficulty']}): {e['reason']}" for e in left_out]
    return "\n".join(lines) + "\n"
