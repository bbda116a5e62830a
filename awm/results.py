"""What the Python API returns: a pair's report and a suite's result as typed objects,
with the JSON schema's field names (docs/output.md)."""
import copy
from dataclasses import dataclass, field


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
    """One pair, with the JSON schema's names."""
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
    lineage: dict = None   # lineage.json: families and their tree (three or more models; else None)
    ruled_out: list = ()   # a library map: {"pair", "first_pass"} the first pass showed independent
    left_out: list = ()    # a benchmark's pairs awm cannot score: {"pair", "pair_id", "reason", ...}
    verdicts_by_difficulty: dict = None   # a benchmark's pairs: right verdicts per difficulty


class Identification(tuple):
    """(ranked [Report], not compared [{"entry", "reason"}]), as before; `.placement` says where
    the suspect sits: its most likely parent(s) and the entries derived from it; `.ruled_out`
    and `.first_pass_only`: the entries the first pass decided, with its evidence."""

    def __new__(cls, matches, not_compared, placement, ruled_out=(), first_pass_only=()):
        identification = super().__new__(cls, (matches, not_compared))
        identification.matches, identification.not_compared, identification.placement = matches, not_compared, placement
        identification.ruled_out, identification.first_pass_only = list(ruled_out), list(first_pass_only)
        return identification
