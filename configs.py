"""The paper's suites and the model map: the code lives in awm/suites/configs.py."""
from awm.suites.configs import *  # noqa: F401,F403
from awm.suites.configs import (  # noqa: F401
    CHECKPOINT_ENV,
    DEFAULT_CHECKPOINT_DIR,
    LABELS,
    MODELS,
    SUITES,
)
