"""The paper's suites and the model map: the code lives in awm/configs.py."""
from awm.configs import *  # noqa: F401,F403
from awm.configs import CHECKPOINT_ENV, DEFAULT_CHECKPOINT_DIR, LABELS, MODELS, SUITES  # noqa: F401
