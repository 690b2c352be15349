"""What a terminal and a launcher do to a script: Ctrl-C, a reader that stops reading
(``| head``), a console that cannot show a name, and the variables torchrun sets."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, run_script
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import predict
from networks import resnet50
from distributed import launch_env
from util import Interrupted, run_cli, UserError


@pytest.fixture(scope="module")
def scan_setup(tmp_path_factory):
    """A checkpoint and a folder of 300 small images."""
    tmp = tmp_path_factory.mktemp("terminal")
    ckpt = str(tmp / "m.pth")
    torch.save({"model": resnet50().state_dict()}, ckpt)
    rng = np.random.default_rng(0)
    os.makedirs(tmp / "imgs")
    for i in range(300):
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(tmp / "imgs" / f"{i:03d}.png")
    return tmp, ckpt


def rows(out):
    with open(f"{out}.jsonl") as f:
        return [json.loads(line)["path"] for line in f]


VALUES = st.one_of(st.none(), st.integers(-2, 5).map(str), st.sampled_from(["", "x", "1.5", " 1", "0x1"]))


@given(rank=VALUES, world=VALUES, local=VALUES)
def test_launcher_variables_are_one_process_of_a_run_or_one_error(monkeypatch, rank, world, local):
    for name, value in (("RANK", rank), ("WORLD_SIZE", world), ("LOCAL_RANK", local)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    try:
        r, w, lr = launch_env()
    except UserError as e:
        assert "unset them to run a single process" in str(e)
        assert any(v is not None and f"={v!r}" in str(e) for v in (rank, world, local))
        return
    assert w >= 1 and 0 <= r < w and lr >= 0
    assert (r, w, lr) == (int(rank or 0), int(world or 1), int(local or 0))


LAUNCH = {"RANK": VALUES, "WORLD_SIZE": VALUES, "LOCAL_RANK": VALUES, "LOCAL_WORLD_SIZE": VALUES,
          "MASTER_ADDR": st.one_of(st.none(), st.sampled_from(["", " ", "127.0.0.1", "node-1"])),
          "MASTER_PORT": st.one_of(st.none(), st.sampled_from(["", "abc", "0", "1", "29500", "65535", "65536", "99999",
                                                               "-1"]))}


@given(env=st.fixed_dictionaries(LAUNCH), rendezvous=st.booleans())
def test_every_launcher_variable_is_checked_in_one_place(monkeypatch, env, rendezvous):
    """RANK and WORLD_SIZE without MASTER_ADDR, MASTER_PORT=abc or 99999 were tracebacks from
    torch.distributed; each bad value is now named in the one line."""
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    given_ = {k: v for k, v in env.items() if v is not None}

    def whole(v, low, high=10**9):
        try:
            return low <= int(v) <= high
        except ValueError:
            return False
    fine = all(whole(given_[k], low) for k, low in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0),
                                                   ("LOCAL_WORLD_SIZE", 1)) if k in given_)
    fine = fine and int(given_.get("RANK", 0)) < int(given_.get("WORLD_SIZE", 1)) and (
        "LOCAL_WORLD_SIZE" not in given_ or int(given_.get("LOCAL_RANK", 0)) < int(given_["LOCAL_WORLD_SIZE"]))
    if rendezvous and ("RANK" in given_ or "WORLD_SIZE" in given_):
        fine = fine and all(given_.get(k, "").strip() for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")) and \
            whole(given_.get("MASTER_PORT", ""), 1, 65535)
    try:
        launch_env(rendezvous)
    except UserError as e:
        assert not fine, e
        assert "\n" not in str(e) and "cannot describe one process of a run" in str(e)
        return
    assert fine


@pytest.mark.parametrize("env, says", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR is not set; MASTER_PORT is not set"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "abc"}, "MASTER_PORT is not a whole"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"}, "MASTER_PORT is not in 1..65535"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}, "RANK is not set"),
])
def test_train_py_under_a_broken_launch_is_one_line_before_anything(tiny_dataset, tmp_path, monkeypatch, env, says):
    import train
    for name in LAUNCH:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=says):
        train.main(["--dataroot", str(tiny_dataset), "--checkpoints_dir", str(tmp_path / "runs"), "--gpu_ids", "-1"])
    assert not os.path.exists(tmp_path / "runs")


def test_a_shard_named_by_the_environment_that_does_not_exist_is_one_line(scan_setup, monkeypatch):
    tmp, ckpt = scan_setup
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("WORLD_SIZE", "2")  # rank 5 of 2 used to score a "shard 6 of 2" and never merge
    with pytest.raises(UserError, match="RANK='5', WORLD_SIZE='2' cannot describe one process"):
        predict.main([str(tmp / "imgs"), "--model_path", ckpt, "--output", str(tmp / "env")])
    assert not os.path.exists(f"{tmp / 'env'}.shard6of2.jsonl")


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
