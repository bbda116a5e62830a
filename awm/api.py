"""The command line's comparisons, suites and library as Python calls returning typed objects.

Nothing is printed and no progress bar is shown unless asked (progress=True). Bad input
raises awm.CheckpointError, awm.ComparisonError or awm.DeviceError (all awm.AwmError) with
the one-line message the command line prints. Heavy modules are imported on first use, so
`import awm` stays quick.
"""
import os
import time

from awm.devices import resolve_device, set_threads
from awm.results import Identification, Report, SuiteResult
from awm.witnesses.verdict import load_reference


def _prepare(threads):
    if threads is not None:
        set_threads(threads)


def compare_record(model_a, model_b, device, null, paper_only=False, vocab_match="bytes", progress=False, precision="exact",
                   adapter_base=None):
    """The pair's JSON record (what the CLI prints and writes); device and null resolved."""
    from awm.comparison.digest import digest_path
    from awm.comparison.pair import compare_digests

    started = time.perf_counter()
    digests = [digest_path(p, device, with_circuit=not paper_only, progress=progress, vocab_match=vocab_match, precision=precision,
                           adapter_base=adapter_base) for p in (model_a, model_b)]
    record = compare_digests(*digests, device, null, progress)
    record["timings"]["total_s"] = round(time.perf_counter() - started, 3)
    return record


def compare(model_a, model_b, *, device="auto", threads=None, paper_only=False, vocab_match="bytes",
            null_stats=None, progress=False, precision="exact", adapter_base=None):
    """Compare two models (directories, .gguf files, Hub repos) as `python main.py --model_paths A B`.

    device: "auto" | "cpu" | "cuda"; threads: CPU threads (default all); paper_only: skip the
    QK-circuit score; vocab_match: "bytes" | "spelling"; null_stats: reference for Z (None:
    the paper's; a dict with mean/std in percent; or a null_stats.json path); precision:
    "exact" (float32 products) | "fast" (bfloat16 products, docs/performance.md); adapter_base:
    the base a LoRA adapter folder among the two is merged into (default: the base it names).
    """
    _prepare(threads)
    record = compare_record(os.fspath(model_a), os.fspath(model_b), resolve_device(device), load_reference(null_stats),
                            paper_only, vocab_match, progress, precision, adapter_base)
    return Report.from_record(record)


def run_suite(suites_or_files, *, results_dir=None, checkpoint_dir=None, device="auto", threads=None,
              cache_gb=None, paper_only=False, vocab_match="bytes", null_stats=None, progress=False, from_hub=False,
              executor="local", library=None, precision="exact"):
    """Run built-in suites or suite files as `python main.py --config ...`: writes the same
    outputs under results_dir (default results/<suite>) and returns them as objects."""
    from awm.library.tasks import options
    from awm.suites import run as suite_run

    if isinstance(suites_or_files, (str, os.PathLike)):
        suites_or_files = [suites_or_files]
    _prepare(threads)
    run, interrupted = suite_run.run_suite([os.fspath(s) for s in suites_or_files], resolve_device(device),
                                           load_reference(null_stats), options(not paper_only, vocab_match, precision),
                                           results_dir, checkpoint_dir, cache_gb, progress, from_hub, executor, library)
    return _suite_result(run, interrupted)


def _suite_result(run, interrupted):
    from awm.suites import evaluation

    return SuiteResult(run.name, run.results_dir, [Report.from_record(r) for r in run.records], run.records, run.skipped,
                       run.metrics(), evaluation.verdict_confusion(run.records), interrupted, run.family_map(), run.ruled_out,
                       run.left_out, run.verdicts_by_difficulty())


def map_library(library, *, results_dir=None, device="auto", threads=None, paper_only=False, vocab_match="bytes",
                null_stats=None, executor="local", progress=False, precision="exact", exhaustive=False):
    """Every pair of a library's entries as `--library DIR --map`: the same outputs under
    results_dir (default results/library-map); `.lineage["tree"]` is the family tree. Pairs
    the first pass rules out are in `.ruled_out` (exhaustive: every pair scored exactly)."""
    from awm.library.folder import library_folder
    from awm.library.tasks import options
    from awm.suites import run as suite_run

    _prepare(threads)
    run, interrupted = suite_run.run_family_map(library_folder(os.fspath(library)), resolve_device(device), load_reference(null_stats),
                                                results_dir, progress, options(not paper_only, vocab_match, precision), executor,
                                                exhaustive)
    return _suite_result(run, interrupted)


def add_to_library(models, library, *, device="auto", threads=None, paper_only=False, vocab_match="bytes",
                   executor="local", progress=False, precision="exact", exact=False):
    """Fingerprint models into a library as `--library DIR --add ...` (exact: keep the exact
    digest too, as --exact): one outcome per model, {"reference", "name", "status": "added" |
    "up to date"} or {"reference", "error"}."""
    from awm.library.tasks import add_models, options

    _prepare(threads)
    models = [os.fspath(m) for m in ([models] if isinstance(models, (str, os.PathLike)) else models)]
    return add_models(models, os.fspath(library), options(not paper_only, vocab_match, precision), resolve_device(device),
                      executor, progress, exact)


def identify(suspect, library, *, device="auto", threads=None, paper_only=False, vocab_match="bytes",
             null_stats=None, executor="local", progress=False, precision="exact", exhaustive=False):
    """Score a suspect against every library entry (a folder, or a published library's Hub
    dataset repo) as `--identify`: (ranked [Report] of the exact stage, not compared
    [{"entry", "reason"}]), with `.placement` (where the suspect sits), `.ruled_out` (entries
    the first pass showed independent) and `.first_pass_only` (candidates whose exact stage
    could not run, with why)."""
    from awm.library import identification
    from awm.library.folder import library_folder
    from awm.library.tasks import options

    _prepare(threads)
    result = identification.identify(os.fspath(suspect), library_folder(os.fspath(library)), options(not paper_only, vocab_match, precision),
                                     resolve_device(device), load_reference(null_stats), executor, progress, exhaustive)
    return Identification([Report.from_record(r) for r in result["matches"]], result["not_compared"], result["placement"],
                          result["ruled_out"], result["first_pass_only"])
