"""Run many pairs: built-in suites, a user's suite file, or every pair of a library's entries.

Each model is read once; every scored pair is kept on disk (a killed run resumes) and the
outputs are rewritten atomically after every pair, so an interrupted run keeps what finished.
A model that cannot be read skips its pairs with the reason; the rest still run.
"""
import os

from tqdm import tqdm

from awm.comparison.pair import compare_digests
from awm.errors import CheckpointError, ComparisonError
from awm.library import screening
from awm.library import tasks as library_tasks
from awm.library.digest_cache import DigestCache, default_budget, reuse_order
from awm.library.folder import Library, PairCache, source_identity
from awm.suites import outputs as suite_outputs
from awm.suites.files import SuitePair, left_out, resolve
from awm.tree import build as family_tree
from awm.tree import lineage
from awm.witnesses.verdict import is_derived


class SuiteRun:
    """Score a list of pairs and write the outputs. Locally, each model is digested in memory
    and reused across its pairs; with a library (``--executor ray``, or a family map over an
    existing library) digests are stored entries and pairs run as executor tasks. Either way
    every scored pair is kept on disk, so a killed run resumes without recomputing them."""

    def __init__(self, name, pairs, device, null, results_dir, budget, options, progress=True,
                 executor="local", library=None, from_library=False, first_pass=False, left_out=()):
        self.name, self.pairs, self.device, self.null = name, pairs, device, null
        self.results_dir, self.progress = results_dir, progress
        self.options = options
        self.cache = DigestCache(device, budget, options, progress)
        self.executor, self.library, self.from_library = executor, library, from_library
        self.first_pass = first_pass           # a library's pairs: the first pass picks those to score exactly
        self.pair_cache = PairCache(os.path.join(results_dir, ".pairs"))
        self.identities = {}
        self._entry_names = {}                 # a model's name in this run -> its library entry
        self.records, self.skipped, self.ruled_out = [], [], []
        self.left_out = list(left_out)         # pairs of the suites' sources awm cannot score, with reasons
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
        if self.records or self.ruled_out:
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
            result = compare_digests(digest_a, digest_b, self.device, self.null, progress=self.progress)
        except (CheckpointError, ComparisonError) as err:
            self.skipped.append({"pair": pair.name, "suite": pair.suite, **pair.facts, "reason": str(err)})
            return
        if key:
            self.pair_cache.put(key, result)
        self._keep(pair, result)

    def _keep(self, pair, result):
        result["model_a"]["name"], result["model_b"]["name"] = pair.name_a, pair.name_b
        self.records.append({"pair": pair.name, "suite": pair.suite, "label": pair.label, "category": pair.category,
                             **pair.facts, **result})

    def _run_on_library(self):
        """Digests as stored entries (each model once), then every pair from them, as executor tasks."""
        library = self.library or os.path.join(self.results_dir, "library")
        names, failed = {}, {}
        if self.from_library:
            names = {p: p for pair in self.pairs for p in (pair.path_a, pair.path_b)}
        else:
            taken = {}
            paths = list(dict.fromkeys(p for pair in self.pairs for p in (pair.path_a, pair.path_b)))
            wanted = {path: library_tasks.entry_name_for(path, taken) for path in paths}
            # Exact entries: a suite scores each model against several others.
            added = library_tasks.add_models_named(wanted, library, self.options, self.device, self.executor, self.progress, exact=True)
            for path, outcome in zip(paths, added):
                if "error" in outcome:
                    failed[path] = outcome["error"]
                else:
                    names[path] = outcome["name"]
                    if outcome["status"] == "added":
                        self.cache.loads[path] += 1
        for pair in self.pairs:
            for name, path in ((pair.name_a, pair.path_a), (pair.name_b, pair.path_b)):
                if path in names:
                    self._entry_names[name] = names[path]
        runnable = [pair for pair in self.pairs if pair.path_a in names and pair.path_b in names]
        keys = {pair: (names[pair.path_a], names[pair.path_b]) for pair in runnable}
        evidence = screening.screen_pairs(Library(library), list(keys.values()), self.options) if self.first_pass else {}
        ruled_out = {key: found for key, found in evidence.items() if not found["candidate"]}
        results, pending = {}, [pair for pair in runnable if keys[pair] not in ruled_out]
        while pending:                            # then the ruled-out pairs a relative found derived links
            outcomes = library_tasks.score_pairs(library, [keys[p] for p in pending], self.options,
                                                 self.device, self.null, self.executor, self.progress)
            results.update(zip(pending, outcomes))
            derived = [keys[p] for p, outcome in results.items() if is_derived(outcome.get("record", {}).get("verdict"))]
            linked = screening.linked_pairs(ruled_out, evidence, derived)
            pending = [pair for pair in runnable if keys[pair] in linked]
            for key in linked:
                del ruled_out[key]
        self.ruled_out = [screening.screened_out(ruled_out[keys[p]], pair=p.name, models=[p.name_a, p.name_b])
                          for p in runnable if keys[p] in ruled_out]
        excluded = {entry["pair"] for entry in self.ruled_out}
        for pair in reuse_order(self.pairs):      # the order a local run reports them in
            if pair.name in excluded:
                continue
            outcome = results.get(pair) or {"error": failed.get(pair.path_a) or failed.get(pair.path_b)}
            if "record" in outcome:
                self._keep(pair, outcome["record"])
            else:
                self.skipped.append({"pair": pair.name, "suite": pair.suite, **pair.facts, "reason": outcome["error"]})

    # ------------------------------------------------------------------ outputs
    @property
    def model_reads(self):
        return self.cache.loads

    def metrics(self):
        return suite_outputs.suite_metrics(self.records)

    def verdicts_by_difficulty(self):
        return suite_outputs.verdicts_by_difficulty(self.records)

    def write_tables(self, final=False):
        suite_outputs.write_tables(self, final)

    def write_plots(self):
        suite_outputs.write_plots(self.results_dir, self.records, self.family_map(), linked_only=self.from_library)

    def family_map(self):
        """lineage.json: the families of derived pairs and their tree (three or more models)."""
        names = list(dict.fromkeys(n for pair in self.pairs for n in (pair.name_a, pair.name_b)))
        if len(names) < suite_outputs.LINEAGE_MIN_MODELS or not (self.records or self.ruled_out):
            return None
        graph = lineage.lineage_graph(self.records, self.ruled_out)
        metas = {r[side]["name"]: r[side] for r in self.records for side in ("model_a", "model_b")}
        scored = set(metas)
        reasons = {}
        for skipped in self.skipped:
            for name in (n for n in names if n not in scored and n in skipped["pair"].split(" vs ")):
                reasons.setdefault(name, skipped["reason"])
        graph["tree"] = family_tree.build(graph["nodes"], self.records, metas, self._digest_of, sorted(reasons.items()))
        return graph

    def _digest_of(self, name):
        """The digest of a model by its name in this run: its library entry, or the run's cache."""
        if self.executor != "local" or self.from_library:
            return Library(self.library or os.path.join(self.results_dir, "library")).open(self._entry_names.get(name, name), self.device)
        path = next(p for pair in self.pairs for n, p in ((pair.name_a, pair.path_a), (pair.name_b, pair.path_b)) if n == name)
        return self.cache.get(path)


def run_suite(specs, device, null, options, results_dir=None, checkpoint_dir=None, cache_gb=None, progress=False,
              from_hub=False, executor="local", library=None):
    """Resolve suites, score every pair, write the outputs; returns (run, interrupted).
    options: library_tasks.options(...), what every digest depends on besides the weights."""
    name, pairs = resolve(specs, checkpoint_dir, from_hub)
    results_dir = os.path.abspath(results_dir or os.path.join("results", suite_outputs.safe_name(name)))
    run = SuiteRun(name, pairs, device, null, results_dir, default_budget(cache_gb), options, progress, executor, library,
                   left_out=left_out(specs))
    return run, run.run()


def run_family_map(library, device, null, results_dir=None, progress=False, options=None, executor="local", exhaustive=False):
    """Every pair of a library's entries: the first pass rules out the pairs it can, the rest
    are scored exactly (exhaustive: every pair); the N x N matrix, heatmap and lineage map."""
    pairs = [SuitePair("library", a, a, b, b) for a, b in library_tasks.family_pairs(library)]
    if not pairs:
        raise CheckpointError(library, "a family map needs at least two entries")
    results_dir = os.path.abspath(results_dir or os.path.join("results", "library-map"))
    run = SuiteRun("library map", pairs, device, null, results_dir, 0, options or library_tasks.options(), progress, executor,
                   library, from_library=True, first_pass=not exhaustive)
    return run, run.run()
