"""tools/: the command lines over data/ (download, verify, mini) list, refuse and report in one line."""
import pytest
from conftest import run_script


@pytest.mark.slow
def test_cli_lists_sources_and_refuses_unknown_names(tmp_path):
    r = run_script("-m", "tools.download", "--list")
    assert r.returncode == 0 and "GANGen-Detection" in r.stdout and "weights" in r.stdout
    r = run_script("-m", "tools.download", "--root", str(tmp_path), "NoSuchSuite")
    assert r.returncode == 2 and "unknown source" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_script("-m", "tools.download", "--root", str(tmp_path), "GenImage")
    assert r.returncode == 2 and "github.com/GenImage-Dataset" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_tools_share_the_one_line_errors():
    for tool, given in (("tools.download", ["--root", "."]), ("tools.verify", ["--dataroot", "."]),
                        ("tools.mini", ["--root", "."])):
        r = run_script("-m", tool, *given, "--no_such_flag", timeout=120)
        assert r.returncode == 2 and r.stderr == "error: unrecognized arguments: --no_such_flag (see --help)\n", tool


@pytest.mark.parametrize("where", ["a folder", "under a file"])
def test_a_report_or_dataset_path_that_cannot_be_written_is_one_line_before_the_work(tmp_path, monkeypatch, where):
    """tools.verify --json <folder> failed after reading every file; tools.mini --root <file>
    was a NotADirectoryError traceback."""
    from data.mini import build_mini
    from tools import verify as verify_tool
    from util import UserError
    (tmp_path / "file").write_text("x")
    json_path = tmp_path if where == "a folder" else tmp_path / "file" / "r.json"
    monkeypatch.setattr(verify_tool, "verify", lambda *a: pytest.fail("the check ran before --json was checked"))
    with pytest.raises(UserError, match="--json"):
        verify_tool.main(["--dataroot", str(tmp_path), "--json", str(json_path)])
    with pytest.raises(UserError, match="NPR-mini"):
        build_mini(str(tmp_path / "file" if where == "a folder" else tmp_path / "file" / "mini"))
