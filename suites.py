"""Run many pairs: built-in suites or a user's suite file, each model read once, results on disk.

Results are rewritten atomically after every pair, so an interrupted run keeps what finished.
A model that cannot be read skips its pairs with the reason; the rest still run.
"""
import csv
import io
import json
import os
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass

import psutil
from tqdm import tqdm

import configs
import evaluation
import fingerprint
import lineage
import plots
import report
from errors import CheckpointError, ComparisonError
from library import PairCache, source_identity

DEFAULT_CACHE_FRACTION = 0.4     # of physical RAM, for digests reused across pairs
HEATMAP_MIN_MODELS = 4
LINEAGE_MIN_MODELS = 3


@dataclass(frozen=True)
class SuitePair:
    suite: str
    name_a: str
    path_a: str
    name_b: str
    path_b: str
    label: str = None
    category: str = None

    @property
    def name(self):
        return f"{self.name_a} vs {self.name_b}"


# ----------------------------------------------------------------------------- suite sources
def builtin_suite(name, checkpoint_override=None, from_hub=False):
    where = lambda model: model_location(model, checkpoint_override, from_hub)
    return [SuitePair(name, p.model_a, where(p.model_a), p.model_b, where(p.model_b), p.label, p.category)
            for p in configs.SUITES[name]]


def model_location(model, checkpoint_override=None, from_hub=False):
    """The model's local folder; with from_hub, its Hub repo when the folder is absent."""
    folder = configs.model_dir(model, checkpoint_override)
    return folder if os.path.isdir(folder) or not from_hub else "hf://" + configs.MODELS[model]


def _read_suite_file(path):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


def file_suite(path):
    """A user's suite: {"name": ..., "models": {name: path}, "pairs": [[a, b] | {"a", "b", "label", "category"}]}.

    Model paths are relative to the suite file; a pair may name a model or give a path; a Hub
    repo (owner/name[@revision], hf://...) is read remotely unless a local path of that name exists.
    """
    try:
        data = _read_suite_file(path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(path, f"suite file does not parse ({err.__class__.__name__}: {str(err)[:100]})") from None
    except Exception as err:  # yaml's own error classes
        raise CheckpointError(path, f"suite file does not parse ({err.__class__.__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list) or not data["pairs"]:
        raise CheckpointError(path, "suite file needs a non-empty 'pairs' list")
    name = str(data.get("name") or os.path.splitext(os.path.basename(path))[0])
    models = data.get("models") or {}
    folder = os.path.dirname(os.path.abspath(path))
    locate = lambda ref: _locate(str(models.get(ref, ref)), folder)
    display = lambda ref: ref if ref in models else os.path.basename(os.path.normpath(str(ref)))
    pairs = []
    for number, entry in enumerate(data["pairs"], 1):
        if isinstance(entry, list) and len(entry) == 2:
            entry = {"a": entry[0], "b": entry[1]}
        if not (isinstance(entry, dict) and entry.get("a") and entry.get("b")):
            raise CheckpointError(path, f"pair {number} needs two models ('a' and 'b')")
        label = entry.get("label")
        if label not in (None, "derived", "independent"):
            raise CheckpointError(path, f"pair {number}: label must be 'derived' or 'independent', not {label!r}")
        pairs.append(SuitePair(name, display(entry["a"]), locate(entry["a"]), display(entry["b"]), locate(entry["b"]),
                               label, entry.get("category") or label))
    return name, pairs


def _locate(reference, folder):
    from readers import hub

    remote = hub.parse_reference(reference, base_dir=folder)
    return str(remote) if remote else os.path.normpath(os.path.join(folder, os.path.expanduser(reference)))


def resolve(specs, checkpoint_override=None, from_hub=False):
    """Suite names or files -> (run name, pairs)."""
    names, pairs = [], []
    for spec in specs:
        if spec in configs.SUITES:
            names.append(spec)
            pairs += builtin_suite(spec, checkpoint_override, from_hub)
        elif os.path.isfile(spec):
            name, found = file_suite(spec)
            names.append(name)
            pairs += found
        else:
            raise CheckpointError(spec, f"neither a built-in suite ({', '.join(configs.SUITES)}) nor a suite file")
    return "+".join(names), pairs


def read_null_stats(path):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        mean, std = float(data["mean"]), float(data["std"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(path, f"null stats need numeric 'mean' and 'std' in percent ({err.__class__.__name__})") from None
    if std <= 0:
        raise CheckpointError(path, "null stats: std must be positive")
    return {"name": f"custom ({os.path.basename(path)})", "mean": mean, "std": std, "source": os.path.abspath(path)}


# ----------------------------------------------------------------------------- the model cache
class DigestCache:
    """Digests of the models a run needs, least recently used evicted beyond a memory budget.

    A model whose per-layer kernels fit a third of the budget keeps them, so all its pairs
    reuse one reading and one set of Gram products. Failures are remembered, not retried.
    """

    def __init__(self, device, budget_bytes, options, progress=False):
        self.device, self.budget, self.progress = device, budget_bytes, progress
        self.with_circuit, self.vocab_match, self.precision = options["with_circuit"], options["vocab_match"], options["precision"]
        self.entries = OrderedDict()
        self.failures = {}
        self.loads = Counter()

    def get(self, path, pinned=()):
        if path in self.failures:
            raise self.failures[path]
        if path in self.entries:
            self.entries.move_to_end(path)
            return self.entries[path]
        try:
            from readers import open_model

            checkpoint = open_model(path, self.vocab_match, self.progress)
            keep = fingerprint.ModelDigest.layer_bytes(checkpoint, self.with_circuit) <= self.budget / 3
            digest = fingerprint.ModelDigest(checkpoint, self.device, keep, self.with_circuit, self.progress, self.precision)
        except (CheckpointError, ComparisonError) as err:
            self.failures[path] = err
            raise
        self.loads[path] += 1
        self.entries[path] = digest
        self._evict(keep=set(pinned) | {path})
        return digest

    def _evict(self, keep):
        while sum(d.size_bytes() for d in self.entries.values()) > self.budget:
            victim = next((p for p in self.entries if p not in keep), None)
            if victim is None:
                return
            del self.entries[victim]


def default_budget(cache_gb):
    if cache_gb is not None:
        return int(cache_gb * 1024 ** 3)
    return int(DEFAULT_CACHE_FRACTION * psutil.virtual_memory().total)


def reuse_order(pairs):
    """Visit pairs so that consecutive ones share a model where possible (fewer re-reads)."""
    remaining, ordered, current = list(pairs), [], set()
    while remaining:
        best = max(remaining, key=lambda p: len({p.path_a, p.path_b} & current))
        remaining.remove(best)
        ordered.append(best)
        current = {best.path_a, best.path_b}
    return ordered


# ----------------------------------------------------------------------------- running
class SuiteRun:
    """Score a list of pairs and write the outputs. Locally, each model is digested in memory
    and reused across its pairs; with a library (``--executor ray``, or a family map over an
    existing library) digests are stored entries and pairs run as executor tasks. Either way
    every scored pair is kept on disk, so a killed run resumes without recomputing them."""

    def __init__(self, name, pairs, device, null, results_dir, budget, options, progress=True,
                 executor="local", library=None, from_library=False):
        self.name, self.pairs, self.device, self.null = name, pairs, device, null
        self.results_dir, self.progress = results_dir, progress
        self.options = options
        self.cache = DigestCache(device, budget, options, progress)
        self.executor, self.library, self.from_library = executor, library, from_library
        self.pair_cache = PairCache(os.path.join(results_dir, ".pairs"))
        self.identities = {}
        self.records, self.skipped = [], []
        self.resumed = 0

    def run(self):
        os.makedirs(self.results_dir, exist_ok=True)
        interrupted = False
        try:
            if self.executor == "local" and not self.from_library:
                for pair in tqdm(reuse_order(self.pairs), desc="pairs", unit="pair", disable=None if self.progress else True):
                    self._run_pair(pair)
                    self.write_tables()
            else:
                self._run_on_library()
        except KeyboardInterrupt:
            interrupted = True
        self.write_tables(final=True)
        if self.records:
            self.write_plots()
        return interrupted

    def _identity(self, path):
        if path not in self.identities:
            try:
                self.identities[path] = source_identity(path)
            except CheckpointError:
                self.identities[path] = None       # reading it will say what is wrong
        return self.identities[path]

    def _pair_key(self, pair):
        identities = [self._identity(p) for p in (pair.path_a, pair.path_b)]
        return None if None in identities else PairCache.key(*identities, self.options, self.null)

    def _run_pair(self, pair):
        key = self._pair_key(pair)
        cached = self.pair_cache.get(key) if key else None
        if cached is not None:
            self.resumed += 1
            self._keep(pair, cached)
            return
        try:
            digest_a = self.cache.get(pair.path_a)
            digest_b = self.cache.get(pair.path_b, pinned=(pair.path_a,))
            result = fingerprint.compare_digests(digest_a, digest_b, self.device, self.null, progress=self.progress)
        except (CheckpointError, ComparisonError) as err:
            self.skipped.append({"pair": pair.name, "suite": pair.suite, "reason": str(err)})
            return
        if key:
            self.pair_cache.put(key, result)
        self._keep(pair, result)

    def _keep(self, pair, result):
        result["model_a"]["name"], result["model_b"]["name"] = pair.name_a, pair.name_b
        self.records.append({"pair": pair.name, "suite": pair.suite, "label": pair.label, "category": pair.category, **result})

    def _run_on_library(self):
        """Digests as stored entries (each model once), then every pair from them, as executor tasks."""
        import identify

        library = self.library or os.path.join(self.results_dir, "library")
        names, failed = {}, {}
        if self.from_library:
            names = {p: p for pair in self.pairs for p in (pair.path_a, pair.path_b)}
        else:
            taken = {}
            paths = list(dict.fromkeys(p for pair in self.pairs for p in (pair.path_a, pair.path_b)))
            wanted = {path: identify.entry_name_for(path, taken) for path in paths}
            for path, outcome in zip(paths, identify.add_models_named(wanted, library, self.options, self.device, self.executor, self.progress)):
                if "error" in outcome:
                    failed[path] = outcome["error"]
                else:
                    names[path] = outcome["name"]
                    if outcome["status"] == "added":
                        self.cache.loads[path] += 1
        runnable = [pair for pair in self.pairs if pair.path_a in names and pair.path_b in names]
        outcomes = identify.score_pairs(library, [(names[p.path_a], names[p.path_b]) for p in runnable], self.options,
                                        self.device, self.null, self.executor, self.progress)
        results = dict(zip(runnable, outcomes))
        for pair in reuse_order(self.pairs):      # the order a local run reports them in
            outcome = results.get(pair) or {"error": failed.get(pair.path_a) or failed.get(pair.path_b)}
            if "record" in outcome:
                self._keep(pair, outcome["record"])
            else:
                self.skipped.append({"pair": pair.name, "suite": pair.suite, "reason": outcome["error"]})

    # ------------------------------------------------------------------ outputs
    def metrics(self):
        labelled = [r for r in self.records if r["label"] in ("derived", "independent")]
        truth = [int(r["label"] == "derived") for r in labelled]
        found = {}
        for key in ("final", "qk_circuit"):
            values = [r["scores"][key] for r in labelled]
            if labelled and None not in values:
                found[key] = evaluation.detection_metrics(values, truth)
        return {k: v for k, v in found.items() if v}

    def null_stats(self):
        independent = [r for r in self.records if r["label"] == "independent"]
        stats = evaluation.null_statistics([r["scores"]["final"] for r in independent])
        if stats is None:
            return None
        circuit = evaluation.null_statistics([r["scores"]["qk_circuit"] for r in independent])
        return {**stats, "qk_circuit": circuit, "source": f"independent pairs of suite run '{self.name}'"}

    def write_tables(self, final=False):
        summary = {
            "tool": "awm", "version": report.TOOL_VERSION, "run": self.name, "reference": self.null,
            "complete": final and len(self.records) + len(self.skipped) == len(self.pairs),
            "pairs": self.records, "skipped": self.skipped,
            "metrics": {k: {m: v for m, v in d.items() if m not in ("fpr", "tpr")} for k, d in self.metrics().items()},
            "verdict_confusion": evaluation.verdict_confusion(self.records),
            "model_reads": {os.path.basename(p): n for p, n in self.cache.loads.items()},
            "resumed_pairs": self.resumed,
        }
        report.write_json_atomic(os.path.join(self.results_dir, "scores.json"), summary)
        report.write_text_atomic(os.path.join(self.results_dir, "scores.csv"), csv_table(self.records))
        report.write_text_atomic(os.path.join(self.results_dir, "table.md"),
                                 markdown_table(self.records, self.skipped, summary["metrics"], self.null, summary["verdict_confusion"]))
        stats = self.null_stats()
        if stats:
            report.write_json_atomic(os.path.join(self.results_dir, "null_stats.json"), stats)

    def write_plots(self):
        folder = os.path.join(self.results_dir, "layers")
        os.makedirs(folder, exist_ok=True)
        for record in self.records:
            plots.layer_curves(record, os.path.join(folder, safe_name(record["pair"])))
        models = {n for r in self.records for n in (r["model_a"]["name"], r["model_b"]["name"])}
        if len(models) >= HEATMAP_MIN_MODELS:
            plots.score_heatmap(self.records, os.path.join(self.results_dir, "heatmap"))
        if len(models) >= LINEAGE_MIN_MODELS:
            graph = lineage.lineage_graph(self.records)
            report.write_json_atomic(os.path.join(self.results_dir, "lineage.json"), graph)
            plots.lineage_figure(graph, os.path.join(self.results_dir, "lineage"))
        curves = self.metrics()
        if curves:
            plots.roc_figure({("AWM score" if k == "final" else "QK-circuit score"): v for k, v in curves.items()},
                             os.path.join(self.results_dir, "roc"))


def safe_name(text):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


CSV_COLUMNS = ("pair", "suite", "category", "label", "wq", "wk", "final", "z_score", "qk_circuit", "verdict")


def csv_table(records):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for r in records:
        writer.writerow([r["pair"], r["suite"], r["category"], r["label"], *(r["scores"][k] for k in ("wq", "wk", "final", "z_score", "qk_circuit")), r["verdict"]])
    return buffer.getvalue()


def confusion_markdown(confusion):
    """The verdicts against the suite's labels, as a Markdown table with the two rates."""
    calls = evaluation.VERDICTS[:-1]
    lines = ["| true label | " + " | ".join(calls) + " |", "|---|" + "---:|" * len(calls)]
    for label, row in confusion["counts"].items():
        lines.append(f"| {label} | " + " | ".join(str(row[c]) for c in calls) + " |")
    rate = lambda v: "n/a" if v is None else f"{v:.3f}"
    lines.append(f"\nVerdict: independent pairs called derived {rate(confusion['false_positive_rate'])}, "
                 f"derived pairs recognised {rate(confusion['true_positive_rate'])}.")
    return "\n".join(lines)


def markdown_table(records, skipped, metrics, null, confusion=None):
    cell = lambda v, fmt="{:.2f}": "n/a" if v is None else fmt.format(v)
    lines = ["| Pair | Category | Wq (%) | Wk (%) | Wq·Wk (%) | Z | QK-circuit (%) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        s = r["scores"]
        lines.append(f"| {r['pair']} | {r['category'] or ''} | {cell(s['wq'])} | {cell(s['wk'])} | {cell(s['final'])} | "
                     f"{cell(s['z_score'], '{:.1f}')} | {cell(s['qk_circuit'])} |")
    lines.append(f"\nZ: |score - {null['mean']:.3f}| / {null['std']:.3f} ({null['name']} reference: {null['source']}).")
    for key, m in metrics.items():
        lines.append(f"\n{'AWM score' if key == 'final' else 'QK-circuit score'}: AUC {m['auc']:.3f}, pAUC (FPR <= {m['pauc_max_fpr']}) "
                     f"{m['pauc']:.3f}, TPR@{m['at_fpr']:.0%}FPR {m['tpr_at_fpr']:.3f} ({m['positives']} derived, {m['negatives']} independent).")
    if confusion and any(sum(row.values()) for row in confusion["counts"].values()):
        lines += ["", confusion_markdown(confusion)]
    if skipped:
        lines.append("\nSkipped:")
        lines += [f"- {s['pair']}: {s['reason']}" for s in skipped]
    return "\n".join(lines) + "\n"


def run_suite(specs, device, null, options, results_dir=None, checkpoint_dir=None, cache_gb=None, progress=False,
              from_hub=False, executor="local", library=None):
    """Resolve suites, score every pair, write the outputs; returns (run, interrupted).
    options: identify.options(...), what every digest depends on besides the weights."""
    name, pairs = resolve(specs, checkpoint_dir, from_hub)
    results_dir = os.path.abspath(results_dir or os.path.join("results", safe_name(name)))
    run = SuiteRun(name, pairs, device, null, results_dir, default_budget(cache_gb), options, progress, executor, library)
    return run, run.run()


def run_family_map(library, device, null, results_dir=None, progress=False, options=None, executor="local"):
    """Every pair of a library's entries: the N x N matrix, the heatmap and the lineage map."""
    import identify

    pairs = [SuitePair("library", a, a, b, b) for a, b in identify.family_pairs(library)]
    if not pairs:
        raise CheckpointError(library, "a family map needs at least two entries")
    results_dir = os.path.abspath(results_dir or os.path.join("results", "library-map"))
    run = SuiteRun("library map", pairs, device, null, results_dir, 0, options or identify.options(), progress, executor,
                   library, from_library=True)
    return run, run.run()


def run_from_args(args, device, null):
    import identify

    options = identify.options(not args.paper_only, args.vocab_match, args.precision)
    run, interrupted = run_suite(args.config, device, null, options, args.results_dir, args.checkpoint_dir, args.cache_gb,
                                 not args.quiet, args.hub, args.executor, args.library)
    return print_run(run, interrupted)


def print_run(run, interrupted):
    name, pairs, results_dir = run.name, run.pairs, run.results_dir
    resumed = f" ({run.resumed} from an earlier run)" if run.resumed else ""
    print(f"{name}: {len(run.records)} of {len(pairs)} pairs scored{resumed}, {len(run.skipped)} skipped -> {results_dir}")
    for record in run.records:
        s = record["scores"]
        circuit = "n/a" if s["qk_circuit"] is None else f"{s['qk_circuit']:7.2f} %"
        print(f"  {record['pair']:60s} {s['final']:7.2f} %  |Z| {s['z_score']:7.1f}  QK-circuit {circuit}  {record['verdict']}")
    for skipped in run.skipped:
        print(f"  skipped {skipped['pair']}: {skipped['reason']}")
    for key, m in run.metrics().items():
        print(f"  {'AWM' if key == 'final' else 'QK-circuit'}: AUC {m['auc']:.3f}  pAUC {m['pauc']:.3f}  TPR@1%FPR {m['tpr_at_fpr']:.3f}")
    confusion = evaluation.verdict_confusion(run.records)
    if confusion["false_positive_rate"] is not None or confusion["true_positive_rate"] is not None:
        counts = lambda label: ", ".join(f"{n} {call}" for call, n in confusion["counts"][label].items() if n)
        print(f"  verdicts: derived pairs -> {counts('derived') or 'none'}; independent pairs -> {counts('independent') or 'none'}")
    if interrupted:
        print("interrupted: finished pairs are saved")
        return 130
    return 0 if run.records else 1
