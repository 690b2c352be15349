"""The optional extra (requirements-demo.txt): the README's install leaves it out, so every test
module must import without it, and a test that needs it must say so by skipping."""
import contextlib
import glob
import importlib.abc
import importlib.util
import os
import sys

import pytest
from conftest import EXTRA_PACKAGES, ROOT


class Absent(importlib.abc.MetaPathFinder):
    """Makes the extra's packages unimportable, installed or not."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in EXTRA_PACKAGES:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def reimported(name, module):
    """Whether ``without_the_extra`` imports ``module`` afresh: the extra's packages, and the
    project's own modules (not the virtual environment's, which may lie inside the repository)."""
    path = os.path.abspath(getattr(module, "__file__", None) or "/")
    return name.split(".")[0] in EXTRA_PACKAGES or (
        name != "conftest" and path.startswith(ROOT + os.sep) and "site-packages" not in path)


@contextlib.contextmanager
def without_the_extra():
    """This interpreter as the README's install leaves it: the extra's packages cannot be imported,
    and the project's own modules are imported afresh (a module that imported the extra before
    must do it again). Everything is put back after."""
    saved = {n: m for n, m in sys.modules.items() if reimported(n, m)}
    for name in saved:
        del sys.modules[name]
    finder = Absent()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n, m in list(sys.modules.items()) if reimported(n, m)]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_every_test_module_imports_without_the_optional_extra(monkeypatch):
    import conftest
    monkeypatch.setattr(conftest, "REQUIRE_EXTRAS", False)  # the README's install, even in CI's second stage
    skipped = []
    with without_the_extra():
        for path in sorted(glob.glob(os.path.join(ROOT, "tests", "test_*.py"))):
            name = os.path.basename(path)[:-3]
            spec = importlib.util.spec_from_file_location(f"_without_extra_{name}", path)
            try:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            except pytest.skip.Exception as e:  # a module that needs the extra says so
                skipped.append((name, str(e)))
    assert skipped and all("requirements-demo.txt" in why for _, why in skipped), skipped
    assert {"test_demo", "test_demo_limits"} <= {name for name, _ in skipped}
