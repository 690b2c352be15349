"""util.py's run_cli and terminal_safe: Ctrl-C is one line and exit code 130 (a scan keeps its rows and
a rerun finishes), a reader that stops reading (``| head``) ends a scan quietly, and a console that cannot
show a name, or a name holding control characters, gets it escaped."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, run_script
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import predict
from util import Interrupted, run_cli


def rows(out):
    with open(f"{out}.jsonl") as f:
        return [json.loads(line)["path"] for line in f]


@pytest.mark.parametrize("raised, line", [(KeyboardInterrupt(), "interrupted\n"),
                                          (Interrupted("3 of 9 kept"), "interrupted: 3 of 9 kept\n")])
def test_ctrl_c_is_one_line_and_exit_code_130(capsys, raised, line):
    def main(argv):
        raise raised
    with pytest.raises(SystemExit) as e:
        run_cli(main, [])
    assert e.value.code == 130 and capsys.readouterr().err == line


@pytest.mark.slow
def test_ctrl_c_during_a_scan_keeps_the_rows_and_a_rerun_finishes(scan_setup):
    tmp, ckpt = scan_setup
    out = str(tmp / "interrupted")
    cmd = [sys.executable, os.path.join(ROOT, "predict.py"), str(tmp / "imgs"), "--model_path", ckpt, "--output", out,
           "--batch_size", "1", "--num_threads", "0", "--gpu_ids", "-1"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(f"{out}.jsonl") and os.path.getsize(f"{out}.jsonl")):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    kept = len(rows(out))
    assert 0 < kept < 300
    assert f"interrupted: {kept} of 300 images scored, kept in {out}.jsonl; run the same command again" in err
    r = run_script(*cmd[1:], timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{kept} of 300 images already scored" in r.stdout + r.stderr
    assert rows(out) == sorted(str(tmp / "imgs" / f"{i:03d}.png") for i in range(300))


@pytest.mark.slow
def test_a_reader_that_stops_reading_ends_the_scan_quietly(scan_setup):
    tmp, ckpt = scan_setup
    out = str(tmp / "piped")
    p = subprocess.Popen([sys.executable, os.path.join(ROOT, "predict.py"), str(tmp / "imgs"), "--model_path", ckpt,
                          "--output", out, "--list", "--gpu_ids", "-1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    p.stdout.readline()  # `predict.py ... | head -1`
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=300)
    assert p.returncode == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err
    with open(f"{out}.json") as f:  # the scan itself finished and wrote its files
        assert len(json.load(f)["predictions"]) == 300


@pytest.mark.slow
def test_a_console_that_cannot_show_a_name_gets_it_escaped(scan_setup, tmp_path):
    _, ckpt = scan_setup
    Image.new("RGB", (32, 32)).save(tmp_path / "фото±.png")
    r = run_script("predict.py", str(tmp_path), "--model_path", ckpt, "--output", str(tmp_path / "p"),
                   "--gpu_ids", "-1", env={"PYTHONIOENCODING": "ascii"}, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "\\u0444\\u043e\\u0442\\u043e\\xb1.png" in r.stdout


@given(name=st.text(st.characters(min_codepoint=1, max_codepoint=0x9F, exclude_characters="/"), min_size=1,
                    max_size=8))
def test_a_file_name_cannot_write_control_characters_to_the_terminal(scan_setup, tmp_path_factory, name):
    """A name holding a terminal's escape sequence (ESC [ ... ) or a newline: printed as escapes,
    on the row's one line, in the table and in the warnings."""
    import contextlib
    import io
    _, ckpt = scan_setup
    folder = tmp_path_factory.mktemp("names")
    good, bad = name + "\x1b[2J.png", name + "\n\x1b]0;x\x07.png"
    Image.new("RGB", (8, 8)).save(folder / good)
    (folder / bad).write_bytes(b"not an image")  # named in a warning line
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert predict.main([str(folder), "--model_path", ckpt, "--output", str(folder / "p"), "--gpu_ids", "-1",
                             "--num_threads", "0"]) == 0
    text = out.getvalue()
    assert not any(c in text for c in "\x1b\x07\x9b\r")
    table = text.split("P(fake)  verdict\n", 1)[1].splitlines()
    assert len([row for row in table if row.endswith(("real", "fake", "unreadable"))]) == 2
