"""The exceptions the tool raises for bad input: each names what is wrong in one line."""


class AwmError(Exception):
    """Base of every error awm reports to its user; ``str(err)`` is the one-line message."""


class CheckpointError(AwmError):
    """A checkpoint (or config, tokenizer, suite file) that cannot be used.

    ``str(err)`` is the one-line message shown to the user: ``<path>: <problem>``.
    """

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ComparisonError(AwmError):
    """Two readable models that cannot be compared (e.g. no shared tokens and unequal widths)."""


class DeviceError(AwmError):
    """The requested device cannot be used (e.g. --device cuda without a usable GPU)."""


class SourceUnavailable(CheckpointError):
    """A compact library entry whose model can no longer be read from its source: only the
    first pass could look at it."""
