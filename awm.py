"""awm from Python: the command line's comparisons and suites as typed objects.

    import awm
    report = awm.compare("path/to/A", "path/to/B", device="cpu")
    report.scores.final, report.verdict, report.layers[0].wq
    report.to_dict()          # exactly the JSON record `python main.py --output` writes

Nothing is printed and no progress bar is shown unless asked (progress=True). Bad input
raises awm.CheckpointError, awm.ComparisonError or awm.DeviceError (all awm.AwmError) with
the one-line message the command line prints.
"""
import copy
import os
import time
from dataclasses import dataclass, field

from errors import AwmError, CheckpointError, ComparisonError, DeviceError
from report import TOOL_VERSION as __version__

__all__ = ["compare", "run_suite", "add_to_library", "identify", "Report", "Scores", "ResidualScores", "LayerScores", "SuiteResult",
           "AwmError", "CheckpointError", "ComparisonError", "DeviceError", "__version__"]


@dataclass(frozen=True)
class Scores:
    """Percent. final is the AWM score (mean of wq and wk); z_score is |final - mean| / std
    against the report's reference; None where undefined."""
    wq: float
    wk: float
    final: float
    qk_circuit: float
    z_score: float


@dataclass(frozen=True)
class ResidualScores:
    """The scores with each model's common embedding directions projected out (percent);
    None when not computed (only needed when the correspondence test fails and a score is
    above the reference)."""
    wq: float
    wk: float
    final: float
    qk_circuit: float


@dataclass(frozen=True)
class LayerScores:
    layer_a: int
    layer_b: int
    wq: float
    wk: float
    qk_circuit: float


@dataclass(frozen=True)
class Report:
    """One pair, with the JSON schema's names (README, "Output")."""
    model_a: dict
    model_b: dict
    scores: Scores
    residual_scores: ResidualScores
    verdict: str
    verdict_reason: str
    reference: dict
    evidence: dict
    layers: list
    timings: dict
    record: dict = field(repr=False)

    @classmethod
    def from_record(cls, record):
        return cls(record["model_a"], record["model_b"], Scores(**record["scores"]),
                   ResidualScores(**record["residual_scores"]), record["verdict"], record["verdict_reason"],
                   record["reference"], record["evidence"], [LayerScores(**layer) for layer in record["layers"]],
                   record["timings"], record)

    def to_dict(self):
        """The JSON record, key for key what `--output` writes (a copy: the report stays as computed)."""
        return copy.deepcopy(self.record)


@dataclass(frozen=True)
class SuiteResult:
    name: str
    results_dir: str
    reports: list          # Report per scored pair, in run order
    pairs: list            # the suite's records (pair name, suite, label, category + the report)
    skipped: list          # {"pair", "suite", "reason"}
    metrics: dict          # ROC metrics per score ("final", "qk_circuit")
    verdict_confusion: dict
    interrupted: bool


# ----------------------------------------------------------------------------- set-up
def resolve_device(choice="auto"):
    """A torch.device for "auto", "cpu", "cuda" (or a torch.device); DeviceError if unusable."""
    import torch

    if isinstance(choice, torch.device):
        choice = choice.type
    if choice not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device '{choice}': use auto, cpu or cuda")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device cuda: CUDA is not available (torch {torch.__version__}, "
                          f"built {'with' if torch.version.cuda else 'without'} CUDA; no usable GPU found)")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(count=None):
    import torch

    torch.set_num_threads(max(1, count or os.cpu_count() or 1))


def _prepare(threads):
    if threads is not None:
        set_threads(threads)


def load_null(null_stats=None):
    """The reference for Z: the paper's, a dict with mean/std (percent), or a null_stats.json path."""
    import report

    if not null_stats:
        return report.PAPER_NULL
    if isinstance(null_stats, dict):
        return {"name": "custom", "source": "given by the caller", **null_stats}
    import suites

    return suites.read_null_stats(null_stats)


# ----------------------------------------------------------------------------- entry points
def compare_record(model_a, model_b, device, null, paper_only=False, vocab_match="bytes", progress=False, precision="exact"):
    """The pair's JSON record (what the CLI prints and writes); device and null resolved."""
    import fingerprint

    started = time.perf_counter()
    digests = [fingerprint.digest_path(p, device, with_circuit=not paper_only, progress=progress, vocab_match=vocab_match,
                                       precision=precision)
               for p in (model_a, model_b)]
    record = fingerprint.compare_digests(*digests, device, null, progress)
    record["timings"]["total_s"] = round(time.perf_counter() - started, 3)
    return record


def compare(model_a, model_b, *, device="auto", threads=None, paper_only=False, vocab_match="bytes",
            null_stats=None, progress=False, precision="exact"):
    """Compare two models (directories, .gguf files, Hub repos) as `python main.py --model_paths A B`.

    device: "auto" | "cpu" | "cuda"; threads: CPU threads (default all); paper_only: skip the
    QK-circuit score; vocab_match: "bytes" | "spelling"; null_stats: reference for Z (None:
    the paper's; a dict with mean/std in percent; or a null_stats.json path); precision:
    "exact" (float32 products) | "fast" (bfloat16 products, see README).
    """
    _prepare(threads)
    record = compare_record(os.fspath(model_a), os.fspath(model_b), resolve_device(device), load_null(null_stats),
                            paper_only, vocab_match, progress, precision)
    return Report.from_record(record)


def run_suite(suites_or_files, *, results_dir=None, checkpoint_dir=None, device="auto", threads=None,
              cache_gb=None, paper_only=False, vocab_match="bytes", null_stats=None, progress=False, from_hub=False,
              executor="local", library=None, precision="exact"):
    """Run built-in suites or suite files as `python main.py --config ...`: writes the same
    outputs under results_dir (default results/<suite>) and returns them as objects."""
    import identify
    import suites

    if isinstance(suites_or_files, (str, os.PathLike)):
        suites_or_files = [suites_or_files]
    _prepare(threads)
    options = identify.options(not paper_only, vocab_match, precision)
    run, interrupted = suites.run_suite([os.fspath(s) for s in suites_or_files], resolve_device(device), load_null(null_stats),
                                        options, results_dir, checkpoint_dir, cache_gb, progress, from_hub, executor, library)
    import evaluation

    return SuiteResult(run.name, run.results_dir, [Report.from_record(r) for r in run.records], run.records, run.skipped,
                       run.metrics(), evaluation.verdict_confusion(run.records), interrupted)


def add_to_library(models, library, *, device="auto", threads=None, paper_only=False, vocab_match="bytes",
                   executor="local", progress=False, precision="exact"):
    """Digest models into a fingerprint library as `--library DIR --add ...`: one outcome per
    model, {"reference", "name", "status": "added" | "up to date"} or {"reference", "error"}."""
    import identify

    _prepare(threads)
    models = [os.fspath(m) for m in ([models] if isinstance(models, (str, os.PathLike)) else models)]
    return identify.add_models(models, os.fspath(library), identify.options(not paper_only, vocab_match, precision),
                               resolve_device(device), executor, progress)


def identify(suspect, library, *, device="auto", threads=None, paper_only=False, vocab_match="bytes",
             null_stats=None, executor="local", progress=False, precision="exact"):
    """Score a suspect against every library entry as `--identify`: (ranked [Report], not
    compared [{"entry", "reason"}])."""
    import identify as one_to_many

    _prepare(threads)
    result = one_to_many.identify(os.fspath(suspect), os.fspath(library), one_to_many.options(not paper_only, vocab_match, precision),
                                  resolve_device(device), load_null(null_stats), executor, progress)
    return [Report.from_record(r) for r in result["matches"]], result["not_compared"]
