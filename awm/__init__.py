"""awm: was this language model derived from that one? The AWM weight-matrix fingerprint
(ICLR 2026), a disguise-robust QK-circuit score and a calibrated verdict, from weights alone.

    import awm
    report = awm.compare("path/to/A", "path/to/B", device="cpu")
    report.scores.final, report.verdict, report.layers[0].wq
    report.to_dict()          # exactly the JSON record `python main.py --output` writes

The command line is `awm` (or `python main.py` in a checkout); `python -m awm` works too.
"""
from awm.api import add_to_library, compare, identify, map_library, run_suite
from awm.errors import AwmError, CheckpointError, ComparisonError, DeviceError
from awm.results import (
           Identification,
           LayerScores,
           Report,
           ResidualScores,
           Scores,
           SuiteResult,
)
from awm.version import VERSION as __version__

__all__ = ["compare", "run_suite", "add_to_library", "identify", "map_library", "Report", "Scores", "ResidualScores",
           "LayerScores", "SuiteResult", "Identification", "AwmError", "CheckpointError", "ComparisonError", "DeviceError", "__version__"]
