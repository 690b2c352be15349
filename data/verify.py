"""Moved: the verifier is ``tools/verify.py`` (``python -m tools.verify``)."""
from util import moved_module

moved_module(__name__, "tools.verify")
