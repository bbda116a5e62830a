"""The method's mathematics (CKA, alignment, correspondence test): the code lives in awm/similarity_metrics.py."""
from awm.similarity_metrics import *  # noqa: F401,F403
from awm.similarity_metrics import __all__  # noqa: F401
