"""predict.py's result files in any state a crash, a person or a second run can leave them, and
shards finishing in any order: drawn by hypothesis, run in process (predict.main). Whatever
happened, a rerun ends with one row per input, equal to one uninterrupted run's, and a row it
keeps is never changed."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import leftovers, PAGE, ROOT
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import predict
import prediction_store
from networks import resnet50
from util import UserError


N_IMAGES = 7


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(images folder, checkpoint, the files of one uninterrupted run)."""
    tmp = tmp_path_factory.mktemp("store")
    imgs = tmp / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES - 2):
        Image.fromarray(rng.integers(0, 256, (24 + 2 * (i % 2), 24, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    (imgs / "5_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    Image.new("RGB", (1, 1)).save(imgs / "6_tiny.png")
    torch.manual_seed(0)
    ckpt = str(tmp / "m.pth")
    torch.save({"model": resnet50().state_dict()}, ckpt)
    ref = str(tmp / "ref" / "p")
    run_predict(imgs, ckpt, ref)
    return imgs, ckpt, ref


def run_predict(imgs, ckpt, out, *extra):
    """predict.main in this process; its printed output."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert predict.main([str(imgs), "--model_path", ckpt, "--gpu_ids", "-1", "--num_threads", "0",
                             "--batch_size", "3", "--output", out, *extra]) == 0
    return buf.getvalue()


def run_predict_logged(imgs, ckpt, out, *extra):
    """run_predict, with what it logged added to what it printed."""
    import logging
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    logging.getLogger("npr").addHandler(handler)
    try:
        return run_predict(imgs, ckpt, out, *extra) + buf.getvalue()
    finally:
        logging.getLogger("npr").removeHandler(handler)


def lines(out):
    with open(out + ".jsonl", "rb") as f:
        return f.read().splitlines(keepends=True)


def assert_same_as(ref, out):
    """``out``'s files hold the rows of ``ref``'s (P(fake) within 1e-6: other batches), complete."""
    a, b = [json.loads(x) for x in lines(ref)], [json.loads(x) for x in lines(out)]
    assert len(b) == N_IMAGES
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k != "prob_fake"} == {k: v for k, v in y.items() if k != "prob_fake"}
        assert (x["prob_fake"] is None) == (y["prob_fake"] is None)
        assert x["prob_fake"] is None or abs(x["prob_fake"] - y["prob_fake"]) < 1e-6
    meta = json.load(open(out + ".json"))
    assert meta["complete"] is True and meta["predictions"] == b
    assert meta["counts"] == json.load(open(ref + ".json"))["counts"]
    with open(out + ".csv", encoding="utf-8") as f:
        assert len(f.read().strip().splitlines()) == N_IMAGES + 1


def row_edits():
    """What a person or a crash can do to one row."""
    return st.sampled_from([
        lambda r: {k: v for k, v in r.items() if k != "verdict"},
        lambda r: dict(r, prob_fake="abc"),
        lambda r: dict(r, prob_fake=1.5),
        lambda r: dict(r, prob_fake=float("nan")),
        lambda r: dict(r, verdict="real" if r.get("verdict") == "fake" else "fake"),
        lambda r: dict(r, path=str(r.get("path")) + "x"),
        lambda r: dict(r, truncated="no"),
        lambda r: dict(r, extra=1),
        lambda r: [r],
    ])


def file_edits():
    """One thing done to the result files (``out``: their common prefix)."""
    def cut(at):
        def f(out):
            if os.path.exists(out + ".jsonl"):
                data = open(out + ".jsonl", "rb").read()
                open(out + ".jsonl", "wb").write(data[: int(len(data) * at)])
        return f

    def delete(ext):
        return lambda out: os.remove(out + ext) if os.path.exists(out + ext) else None

    def write(ext, data):
        return lambda out: open(out + ext, "wb").write(data)

    def edit_row(i, edit):
        def f(out):
            rows = lines(out) if os.path.exists(out + ".jsonl") else []
            if rows:
                k = i % len(rows)
                try:
                    row = json.loads(rows[k])
                    rows[k] = (json.dumps(edit(row) if isinstance(row, dict) else "x") + "\n").encode()
                except ValueError:
                    rows[k] = b"{broken\n"
                open(out + ".jsonl", "wb").write(b"".join(rows))
        return f

    def append(data):
        return lambda out: open(out + ".jsonl", "ab").write(data)

    return st.one_of(
        st.builds(cut, st.floats(0, 1)),
        st.builds(delete, st.sampled_from([".jsonl", ".csv", ".json"])),
        st.builds(write, st.sampled_from([".json", ".jsonl", ".csv"]),
                  st.sampled_from([b"[1, 2]", b"", b"{", b'{"settings": 5}', b'{"settings": {}}', b"\xff\xfe\x00",
                                   b"null"])),
        st.builds(edit_row, st.integers(0, 100), row_edits()),
        st.builds(append, st.sampled_from([b"garbage\n", b'{"path": "x"}\n', b"\n", b'{"path":'])),
    )


@given(edits=st.lists(file_edits(), min_size=1, max_size=3), incomplete=st.booleans())
def test_any_damage_to_the_result_files_ends_in_one_row_per_input(setup, tmp_path, edits, incomplete):
    imgs, ckpt, ref = setup
    work = tmp_path / f"run{time.monotonic_ns()}"
    work.mkdir()
    out = str(work / "p")
    for ext in (".jsonl", ".csv", ".json"):
        shutil.copy(ref + ext, out + ext)
    if incomplete:  # killed before the end: the .json says so
        meta = json.load(open(out + ".json"))
        json.dump({"settings": meta["settings"], "complete": False}, open(out + ".json", "w"))
    for edit in edits:
        edit(out)
    before = lines(out) if os.path.exists(out + ".jsonl") else []
    ref_lines = lines(ref)
    intact = 0  # leading rows the edits left as they were
    while intact < min(len(before), len(ref_lines)) and before[intact] == ref_lines[intact]:
        intact += 1
    settings_kept = prediction_store.PredictionFiles(out, {"threshold": 0.5}, []).meta() is not None
    run_predict(imgs, ckpt, out)
    assert_same_as(ref, out)
    if settings_kept:  # a run that knows these files keeps their valid rows, byte for byte
        assert lines(out)[:intact] == before[:intact]


@pytest.mark.slow  # many in-process runs: the full suite draws them
@given(n=st.integers(1, N_IMAGES + 2), order=st.randoms(use_true_random=False), killed_merge=st.booleans())
def test_shards_in_any_order_merge_into_one_process_output(setup, tmp_path, monkeypatch, n, order, killed_merge):
    imgs, ckpt, ref = setup
    out = str(tmp_path / f"s{time.monotonic_ns()}" / "p")
    ks = list(range(1, n + 1))
    order.shuffle(ks)
    finish = prediction_store.PredictionFiles.finish
    crashed = []

    def finish_or_crash(self, info):
        if self.out == out and killed_merge and not crashed:
            crashed.append(True)
            raise KeyboardInterrupt  # killed in the middle of the merge
        return finish(self, info)
    monkeypatch.setattr(prediction_store.PredictionFiles, "finish", finish_or_crash)
    for i, k in enumerate(ks):
        if i == len(ks) - 1 and killed_merge:
            with pytest.raises(KeyboardInterrupt):
                run_predict(imgs, ckpt, out, "--shard", f"{k}/{n}")
            assert not prediction_store.PredictionFiles(out, {"threshold": 0.5}, []).meta()["complete"]
            said = run_predict(imgs, ckpt, out, "--shard", f"{ks[0]}/{n}")  # any shard's command, again
        else:
            said = run_predict(imgs, ckpt, out, "--shard", f"{k}/{n}")
        if i < len(ks) - 1:
            assert "not merged yet" in said and f"shard {ks[-1]}: not started" in said
    assert "merged the" in said
    assert_same_as(ref, out)


def test_shards_with_other_settings_are_named_not_merged(setup, tmp_path):
    imgs, ckpt, _ = setup
    out = str(tmp_path / "p")
    run_predict(imgs, ckpt, out, "--shard", "1/2", "--threshold", "0.3")
    said = run_predict(imgs, ckpt, out, "--shard", "2/2")
    assert "shard 1: run with other settings (threshold)" in said and not os.path.exists(out + ".json")
    said = run_predict(imgs, ckpt, out, "--shard", "1/2")  # the advice: run it again with the same options
    assert "merged the 2 shards" in said


def test_a_wrong_output_is_one_line_before_the_model_loads(setup, tmp_path):
    imgs, _, _ = setup
    (tmp_path / "file").write_text("x")
    for out, says in ((tmp_path / "file" / "p", "is a file, not a folder"), ("/proc/npr-test/p", "--output"),
                      (tmp_path / ("p" * 250), "jsonl is over the 255 bytes")):  # failed after the scan
        with pytest.raises(UserError, match=says):  # the model path does not exist: it was never read
            predict.main([str(imgs), "--model_path", str(tmp_path / "none.pth"), "--output", str(out)])
    (tmp_path / "p.jsonl").mkdir()  # a folder where a result file goes: a shard's or the merged one
    for extra in ((), ("--shard", "1/2")):
        with pytest.raises(UserError, match="p.jsonl is a folder"):
            predict.main([str(imgs), "--model_path", str(tmp_path / "none.pth"), "--output", str(tmp_path / "p"),
                          *extra])


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_a_visualize_folder_that_cannot_be_one_is_one_line_before_the_model_loads(setup, tmp_path, where):
    imgs, _, _ = setup
    (tmp_path / "file").write_text("x")
    folder = tmp_path / "file" if where == "a file" else tmp_path / "file" / "figs"  # was FileExistsError at the end
    with pytest.raises(UserError, match="--visualize .* choose another --visualize"):  # the model path is never read
        predict.main([str(imgs), "--model_path", str(tmp_path / "none.pth"), "--output", str(tmp_path / "p"),
                      "--visualize", str(folder)])


@pytest.mark.parametrize("spelling", ["new/", "existing", "existing/", "."])
def test_an_output_that_names_a_folder_gets_the_files_inside_it(setup, tmp_path, monkeypatch, spelling):
    imgs, ckpt, ref = setup
    (tmp_path / "existing").mkdir()
    monkeypatch.chdir(tmp_path)  # "." wrote ..csv, ..jsonl, ..json; "new/" failed on new/.lock
    run_predict(imgs, ckpt, spelling)
    folder = tmp_path / spelling
    assert set(os.listdir(folder)) - {"existing"} == {f"predictions.{e}" for e in ("csv", "json", "jsonl", "lock")}
    assert_same_as(ref, str(folder / "predictions"))


def test_an_empty_output_is_refused_by_the_parser():
    with pytest.raises(UserError, match="argument --output: an empty name"):  # it wrote .csv, .jsonl, .json
        predict.main(["x.png", "--output", ""])


def test_a_merge_that_cannot_write_says_so_and_a_rerun_merges(setup, tmp_path):
    imgs, ckpt, ref = setup
    out = str(tmp_path / "p")
    run_predict(imgs, ckpt, out, "--shard", "1/2")
    os.mkdir(out + ".csv")  # appears while shard 2 runs
    real_claim = predict.claim_output
    with pytest.MonkeyPatch.context() as m:
        m.setattr(predict, "claim_output", lambda out, merged=None: real_claim(out))
        said = run_predict(imgs, ckpt, out, "--shard", "2/2")
    assert "not merged: cannot write" in said and "p.csv" in said and "run any shard's command again" in said
    os.rmdir(out + ".csv")
    assert "merged the 2 shards" in run_predict(imgs, ckpt, out, "--shard", "1/2")
    assert_same_as(ref, out)


@pytest.mark.slow
def test_a_second_run_on_one_output_is_refused_while_the_first_holds_it(setup, tmp_path):
    imgs, ckpt, ref = setup
    out = str(tmp_path / "p")
    os.makedirs(tmp_path, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from prediction_store import OutputLock; "
                               f"OutputLock({out!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"held by pid {holder.pid} .*another predict.py is writing"):
            run_predict(imgs, ckpt, out)
    finally:
        holder.kill()
        holder.wait()
    run_predict(imgs, ckpt, out)  # the holder is gone: its lock went with it
    assert_same_as(ref, out)


def test_the_output_folder_removed_during_a_scan_is_written_again(setup, tmp_path, monkeypatch):
    imgs, ckpt, ref = setup
    out = str(tmp_path / "gone" / "p")
    score_files = predict.score_files

    def score_then_remove(*args, **kwargs):
        for i, row in enumerate(score_files(*args, **kwargs)):
            if i == 3:
                shutil.rmtree(tmp_path / "gone")  # a cleaner empties the folder mid-scan
            yield row
    monkeypatch.setattr(predict, "score_files", score_then_remove)
    run_predict(imgs, ckpt, out)
    assert_same_as(ref, out)


@pytest.mark.slow  # draws figures
def test_figures_drawn_inside_the_input_folder_are_not_inputs_of_the_rerun(setup, tmp_path):
    imgs, ckpt, ref = setup
    mine = tmp_path / "imgs"
    shutil.copytree(imgs, mine)
    out = str(tmp_path / "p")
    run_predict(mine, ckpt, out, "--visualize", str(mine / "figs"))
    assert len(os.listdir(mine / "figs")) == N_IMAGES - 2  # the two unusable images get no figure
    rows = lines(out)
    # the figures joined the inputs: the rerun replaced every row and scored its own figures
    assert "already scored" in run_predict_logged(mine, ckpt, out, "--visualize", str(mine / "figs"))
    assert lines(out) == rows


@pytest.mark.slow  # draws figures
@pytest.mark.parametrize("name", ["a" * 250, "é" * 125])  # 250 bytes each: the figure's name went over 255
def test_a_long_name_gets_its_figure_and_a_figure_that_cannot_be_written_costs_only_itself(setup, tmp_path, name,
                                                                                          monkeypatch):
    import figures
    imgs, ckpt, _ = setup
    mine = tmp_path / "imgs"
    mine.mkdir()
    shutil.copy(imgs / "0.png", mine / f"{name}.png")
    shutil.copy(imgs / "1.png", mine / "b.png")
    run_predict(mine, ckpt, str(tmp_path / "p"), "--visualize", str(tmp_path / "figs"))
    drawn = sorted(os.listdir(tmp_path / "figs"))
    assert len(drawn) == 2 and any(d.endswith("_b_npr.png") for d in drawn) and any(name[:40] in d for d in drawn)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(figures, "atomic_file", disk_full)
    said = run_predict_logged(mine, ckpt, str(tmp_path / "q"), "--visualize", str(tmp_path / "figs2"))
    assert len(lines(str(tmp_path / "q"))) == 2 and os.listdir(tmp_path / "figs2") == []  # every row, no figure
    assert said.count("not written") == 2 and "No space left on device" in said


@pytest.mark.parametrize("extra", [(), ("--overwrite",)])
def test_the_advice_after_ctrl_c_finishes_the_scan_when_followed(setup, tmp_path, monkeypatch, extra):
    from util import Interrupted
    imgs, ckpt, ref = setup
    out = str(tmp_path / "p")
    if extra:
        run_predict(imgs, ckpt, out)  # an earlier, complete run, which --overwrite scores afresh
    score_files = predict.score_files

    def ctrl_c_after_3(*args, **kwargs):
        for i, row in enumerate(score_files(*args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt
            yield row
    monkeypatch.setattr(predict, "score_files", ctrl_c_after_3)
    with pytest.raises(Interrupted, match=f"3 of {N_IMAGES} images scored") as said:
        run_predict(imgs, ckpt, out, *extra)
    monkeypatch.setattr(predict, "score_files", score_files)
    command = list(extra)
    if "without --overwrite" in str(said.value):  # the same command would score everything again
        command.remove("--overwrite")
    else:
        assert "run the same command again" in str(said.value)
    assert f"Resuming {out}.jsonl: 3 of {N_IMAGES}" in run_predict_logged(imgs, ckpt, out, *command)
    assert_same_as(ref, out)


@pytest.mark.slow
def test_two_runs_started_together_leave_one_row_per_input(setup, tmp_path):
    """A cron job overlapping itself: one of the two says the output is held and exits 2, or
    finds the other's rows done; the files hold each input once."""
    imgs, ckpt, ref = setup
    out = str(tmp_path / "p")
    cmd = [sys.executable, "predict.py", str(imgs), "--model_path", ckpt, "--gpu_ids", "-1", "--num_threads", "0",
           "--batch_size", "3", "--output", out]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            assert "another predict.py is writing" in err and len(err.strip().splitlines()) == 1
    assert_same_as(ref, out)


@pytest.mark.parametrize("earlier", ["no earlier run", "a stopped run"])
@pytest.mark.parametrize("ext", [".lock", ".jsonl", ".csv", ".json"])
@pytest.mark.parametrize("kind", ["link to a file", "link to an empty file", "dangling link", "fifo", "folder"])
def test_an_odd_thing_at_a_result_path_is_replaced_or_named_never_written_through(setup, tmp_path, ext, kind,
                                                                                   earlier):
    """Whatever sits at one of the fixed names (a link someone planted in a shared folder, a FIFO,
    a folder), with or without the files of a stopped run beside it: the run ends with its rows,
    or says in one line what is in the way; it never hangs, and a file outside the output is
    never written."""
    imgs, ckpt, ref = setup
    out = str(tmp_path / "p")
    if earlier == "a stopped run":
        for e in (".jsonl", ".csv", ".json"):
            shutil.copy(ref + e, out + e)
        meta = json.load(open(out + ".json"))
        json.dump({"settings": meta["settings"], "complete": False}, open(out + ".json", "w"))
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"" if kind == "link to an empty file" else b"keep me\n")
    before = outside.read_bytes()
    target = out + ext
    if os.path.lexists(target):
        os.remove(target)
    if kind.startswith("link"):
        os.symlink(outside, target)
    elif kind == "dangling link":
        os.symlink(tmp_path / "nowhere", target)
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        os.mkdir(target)
    try:
        run_predict(imgs, ckpt, out)
    except UserError as e:
        assert "\n" not in str(e) and os.path.basename(target) in str(e)
    else:
        assert_same_as(ref, out)
    assert outside.read_bytes() == before
    assert not (tmp_path / "nowhere").exists()


# ----------------------------------------------------------------------------- the model's identity

@pytest.fixture(scope="module")
def two_models(setup, tmp_path_factory):
    """Two checkpoints (the setup's and another) and the rows of one uninterrupted run of each."""
    imgs, ckpt, ref = setup
    tmp = tmp_path_factory.mktemp("other")
    torch.manual_seed(1)
    other = str(tmp / "other.pth")
    torch.save({"model": resnet50().state_dict()}, other)
    run_predict(imgs, other, str(tmp / "ref"))
    return {"A": (ckpt, [json.loads(x) for x in lines(ref)]),
            "B": (other, [json.loads(x) for x in lines(str(tmp / "ref"))])}


def rows_of(out):
    return [json.loads(x) for x in lines(out)] if os.path.exists(out + ".jsonl") else []


def model_of(rows, refs, part=(1, 1)):
    """Which model scored ``rows``: the one whose uninterrupted run (its shard ``part``, k of n) they
    are a prefix of, or None."""
    refs = {name: prediction_store.shard_paths(ref, *part) for name, ref in refs.items()}
    same = [name for name, ref in refs.items() if len(rows) <= len(ref) and all(
        (r["prob_fake"] is None) == (x["prob_fake"] is None) and (r["prob_fake"] is None or
                                                                  abs(r["prob_fake"] - x["prob_fake"]) < 1e-6)
        for r, x in zip(rows, ref))]
    return same[0] if same else None


def steps():
    """One thing that happens while a scan is sharded, stopped and started again: a shard's command
    (killed after some rows, or with --overwrite, the checkpoint's path spelled one way or
    another), or a new checkpoint saved over the path."""
    run = st.tuples(st.just("run"), st.integers(1, 3), st.one_of(st.none(), st.integers(0, N_IMAGES)),
                    st.booleans(), st.sampled_from(["absolute", "relative", "dotted", "link"]))
    return st.one_of(run, st.just(("swap",)))


@pytest.mark.slow  # many in-process runs: the full suite draws them
@given(n=st.integers(1, 3), plan=st.lists(steps(), min_size=1, max_size=6))
def test_a_result_file_never_holds_two_models_scores(setup, two_models, tmp_path, monkeypatch, n, plan):
    """A model is known by its checkpoint's contents: a checkpoint saved over the path between (or in
    the middle of) scans never leaves rows of two models in one file, the same file spelled two ways
    is one model, and a shard scored again is merged again."""
    imgs = setup[0]
    work = tmp_path / f"m{time.monotonic_ns()}"
    work.mkdir()
    monkeypatch.chdir(work)
    ckpt = work / "model.pth"
    current = "A"
    shutil.copy(two_models["A"][0], ckpt)
    os.symlink(ckpt, work / "link.pth")
    spell = {"absolute": str(ckpt), "relative": "model.pth", "dotted": "./model.pth", "link": "link.pth"}
    refs = {name: rows for name, (_, rows) in two_models.items()}
    out = str(work / "p")
    score_files = predict.score_files
    for step in plan + [("run", k, None, False, "absolute") for k in range(1, n + 1)]:  # then every shard, to the end
        if step[0] == "swap":
            current = "B" if current == "A" else "A"
            shutil.copy(two_models[current][0], str(ckpt) + ".new")
            os.replace(str(ckpt) + ".new", ckpt)  # as save_checkpoint writes it
            continue
        _, k, kill_after, overwrite, spelling = step
        k = min(k, n)

        def stopped(*args, kill_after=kill_after, **kwargs):
            for i, row in enumerate(score_files(*args, **kwargs)):
                if i == kill_after:
                    raise KeyboardInterrupt
                yield row
        monkeypatch.setattr(predict, "score_files", stopped if kill_after is not None else score_files)
        extra = (["--shard", f"{k}/{n}"] if n > 1 else []) + (["--overwrite"] if overwrite else [])
        try:
            run_predict(imgs, spell[spelling], out, *extra)
        except KeyboardInterrupt:
            pass
        for o, part in [(out, (1, 1))] + [(prediction_store.shard_name(out, j, n), (j, n)) for j in range(1, n + 1)]:
            rows = rows_of(o)
            assert model_of(rows, refs, part) is not None, f"{o} holds rows of two models"
            meta = prediction_store.PredictionFiles(o, {"threshold": 0.5}, []).meta()
            if o == out and meta and meta.get("complete"):
                assert len(rows) == N_IMAGES and model_of(rows, refs) == next(
                    name for name, (path, _) in two_models.items() if prediction_store.sha256_of(path) ==
                    meta["model_sha256"])
    final = rows_of(out)
    assert len(final) == N_IMAGES and model_of(final, refs) == current


def test_the_same_checkpoint_spelled_two_ways_merges_and_a_shard_scored_again_is_merged_again(setup, tmp_path,
                                                                                              monkeypatch):
    imgs, ckpt, ref = setup
    monkeypatch.chdir(os.path.dirname(ckpt))
    work = tmp_path / "imgs"
    shutil.copytree(imgs, work)
    out = str(tmp_path / "p")
    run_predict(work, ckpt, out, "--shard", "1/2")
    assert "merged the 2 shards" in run_predict(work, os.path.basename(ckpt), out, "--shard", "2/2")
    before = json.load(open(out + ".json"))
    assert before["model_sha256"] == prediction_store.sha256_of(ckpt)
    assert "are merged in" in run_predict(work, ckpt, out, "--shard", "1/2")  # nothing new: nothing to merge
    Image.fromarray(np.full((24, 24, 3), 7, dtype=np.uint8)).save(work / "0.png")  # an image of shard 1 changes
    assert "merged the 2 shards" in run_predict(work, ckpt, out, "--shard", "1/2", "--overwrite")
    after = json.load(open(out + ".json"))
    assert after["merged_from"][0] != before["merged_from"][0] and after["merged_from"][1] == before["merged_from"][1]
    assert after["predictions"][0]["prob_fake"] != before["predictions"][0]["prob_fake"]
    assert after["predictions"][1:] == before["predictions"][1:]


@pytest.mark.slow
@given(free_pages=st.integers(0, 12), shards=st.sampled_from([1, 2]))
def test_predict_on_a_disk_that_fills(setup, small_disk, free_pages, shards):  # noqa: F811
    imgs, ckpt, ref = setup
    disk = getattr(test_predict_on_a_disk_that_fills, "disk", None)
    if disk is None or not os.path.ismount(disk.path):
        disk = test_predict_on_a_disk_that_fills.disk = small_disk(1 << 20)
    for name in os.listdir(disk.path):
        os.remove(os.path.join(disk.path, name))
    out = os.path.join(disk.path, "p")
    disk.fill(free_pages * PAGE)
    for k in range(1, shards + 1):
        extra = ["--shard", f"{k}/{shards}"] if shards > 1 else []
        try:
            said = run_predict(imgs, ckpt, out, *extra)
            assert "not merged: cannot write" in said or "merged" in said or shards == 1
        except UserError as e:
            assert "No space left on device" in str(e) and "free some space and run the same command again" in str(e)
            assert "\n" not in str(e)
        assert leftovers(disk.path) == []
        part = prediction_store.shard_name(out, k, shards) if shards > 1 else out
        files = prediction_store.PredictionFiles(part, {"threshold": 0.5}, [])
        if os.path.exists(part + ".jsonl"):  # what was written is whole rows, bar a cut last one
            data = open(part + ".jsonl", "rb").read()
            assert data.count(b"\n") <= N_IMAGES and files is not None
    disk.unfill()
    for k in range(1, shards + 1):
        run_predict(imgs, ckpt, out, *(["--shard", f"{k}/{shards}"] if shards > 1 else []))
    assert_same_as(ref, out)
