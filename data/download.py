"""Moved: the downloader is ``tools/download.py`` (``python -m tools.download``)."""
from util import moved_module

moved_module(__name__, "tools.download")
