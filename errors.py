"""The one exception type the tool raises for bad input: it names the file and the problem."""


class CheckpointError(Exception):
    """A checkpoint (or config, tokenizer, suite file) that cannot be used.

    ``str(err)`` is the one-line message shown to the user: ``<path>: <problem>``.
    """

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ComparisonError(Exception):
    """Two readable models that cannot be compared (e.g. no shared tokens and unequal widths)."""
