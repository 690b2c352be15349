"""Moved: the NPR-mini builder is ``tools/mini.py`` (``python -m tools.mini``)."""
from util import moved_module

moved_module(__name__, "tools.mini")
