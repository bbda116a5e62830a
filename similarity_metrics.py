"""The method's mathematics (CKA, alignment, correspondence test): the code lives in awm/method/__init__.py."""
from awm.method import *  # noqa: F401,F403
from awm.method import __all__  # noqa: F401
