"""The optional extra (requirements-demo.txt): the README's install leaves it out, so every test
module must collect without it, and a test that needs it must say so by skipping."""
import subprocess
import sys

from conftest import EXTRA_PACKAGES, ROOT

# An interpreter where the extra's packages cannot be imported, whether or not they are installed.
COLLECT_WITHOUT_EXTRAS = f"""
import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {set(EXTRA_PACKAGES)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Absent())
import pytest
sys.exit(pytest.main(["--collect-only", "-q", "-rs", "-p", "no:cacheprovider", "tests"]))
"""


def test_every_test_module_collects_without_the_optional_extra():
    env = {k: v for k, v in __import__("os").environ.items() if k != "NPR_REQUIRE_DEMO"}
    r = subprocess.run([sys.executable, "-c", COLLECT_WITHOUT_EXTRAS], cwd=ROOT, capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "error" not in r.stdout.lower().split("short test summary info")[-1].replace("errors=", ""), r.stdout
    # The modules that need the extra are reported as skipped, with the package and how to install it.
    assert "SKIPPED" in r.stdout and "requirements-demo.txt" in r.stdout, r.stdout[-3000:]
