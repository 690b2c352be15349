"""scores.py and test.py's per-image scores: the tables (intervals included) are recomputed from
scores.csv.gz alone, NumPy and pandas read it as it is, a damaged or foreign file is one line, and
--compare runs over checkpoints and over score files, however their images differ."""
import contextlib
import csv
import gzip
import io
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import need_extra, write_leaf
from hypothesis import given
from hypothesis import strategies as st

import scores
import test as test_script
from bootstrap import add_intervals
from networks import resnet50
from report import RESULT_FIELDS
from util import UserError


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """(dataroot, two checkpoints, the results folder of test.py over both)."""
    root = tmp_path_factory.mktemp("scores")
    write_leaf(str(root / "data" / "mysuite" / "gen_a"), 6, 6, seed=1)
    write_leaf(str(root / "data" / "mysuite" / "gen_b" / "cat"), 4, 8, seed=2)
    write_leaf(str(root / "data" / "mysuite" / "gen_c"), 5, 0, seed=3)  # reals only: no AP, not in the Mean
    (root / "data" / "mysuite" / "gen_a" / "1_fake" / "broken.png").write_bytes(b"not an image")
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        ckpts.append(str(root / f"m{seed}.pth"))
        torch.save({"model": resnet50().state_dict(), "threshold": 0.45}, ckpts[-1])
    results = str(root / "results")
    run_test(str(root / "data"), results, "--model_path", *ckpts)
    return str(root / "data"), ckpts, results


def run_test(data, results, *extra):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert test_script.main(["--dataroot", data, "--gpu_ids", "-1", "--num_threads", "0", "--results_dir",
                                 results, "--bootstrap", "300", *extra]) == 0
    return buf.getvalue()


def test_the_tables_are_recomputed_from_the_scores_file_alone(evaluated):
    _, ckpts, results = evaluated
    with open(os.path.join(results, "results.csv"), encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    rebuilt = scores.rows_from_scores(scores.read_scores(os.path.join(results, scores.NAME)))
    for ckpt in ckpts:  # one suite, no perturbation: a checkpoint's rows are one table
        rows = [r for r in rebuilt if r["model_path"] == ckpt and r["generator"] != "Mean"]
        mean = next(r for r in rebuilt if r["model_path"] == ckpt and r["generator"] == "Mean")
        add_intervals(rows, mean, 300, 0)
    assert len(rebuilt) == len(table) == 2 * 4  # 3 generators and the Mean row, per checkpoint
    checked = 0
    for mine, theirs in zip(rebuilt, table):
        for k in RESULT_FIELDS:
            if k in ("seconds", "folder", "paper_acc", "paper_ap") or theirs[k] in ("", "nan"):
                continue
            if k in mine and mine[k] is not None:
                value = float(mine[k]) if not isinstance(mine[k], str) else mine[k]
                assert str(value) == theirs[k] or value == pytest.approx(float(theirs[k]), abs=1e-9), (k, mine[k],
                                                                                                   theirs[k])
                checked += 1
    assert checked > 150
    assert [r["ap"] for r in table if r["generator"] == "gen_c"] == ["nan", "nan"]  # reals only
    assert [r["n_skipped"] for r in table if r["generator"] == "gen_a"] == ["1", "1"]


def test_numpy_reads_it_as_it_is(evaluated):
    _, ckpts, results = evaluated
    table = np.loadtxt(os.path.join(results, scores.NAME), delimiter=",", dtype=str, quotechar='"')
    assert list(table[0]) == scores.FIELDS and len(table) - 1 == 2 * (13 + 12 + 5)


@pytest.mark.extra  # pandas comes with the demo's extra
def test_pandas_reads_it_as_it_is(evaluated):
    _, ckpts, results = evaluated
    frame = need_extra("pandas").read_csv(os.path.join(results, scores.NAME))
    assert set(frame["checkpoint"]) == set(ckpts) and frame["prob_fake"].isna().sum() == 2  # broken.png, twice


def test_the_scores_file_is_the_same_bytes_for_the_same_scores(evaluated, tmp_path):
    data, ckpts, results = evaluated
    run_test(data, str(tmp_path), "--model_path", *ckpts)
    assert open(os.path.join(results, scores.NAME), "rb").read() == open(tmp_path / scores.NAME, "rb").read()


def damaged(path, out, edit):
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        text = f.read()
    data = edit(text)
    with open(out, "wb") as f:
        f.write(data if isinstance(data, bytes) else gzip.compress(data.encode("utf-8")))
    return out


EDITS = {
    "cut inside the gzip stream": lambda t: gzip.compress(t.encode())[:-40],
    "not gzip": lambda t: t.encode(),
    "empty": lambda t: b"",
    "a row cut short": lambda t: t[: t.index("\n", len(t) // 2) - 5] + "\n",
    "a column renamed": lambda t: t.replace("prob_fake", "p_fake", 1),
    "a label of 2": lambda t: t.replace(",0,", ",2,", 1),
    "a probability of 1.5": lambda t: t.replace(",scored,", ",scored,", 1).replace(",0.", ",1.5", 1),
    "a score for a skipped image": lambda t: t.replace(",,unreadable,", ",0.5,unreadable,", 1),
    "a status nobody writes": lambda t: t.replace(",scored,", ",great,", 1),
    "a row twice": lambda t: t + t.splitlines()[1] + "\n",
    "only the header": lambda t: t.splitlines()[0] + "\n",
    "another program's CSV": lambda t: "a,b,c\n1,2,3\n",
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_damaged_scores_file_is_one_line(evaluated, tmp_path, edit):
    _, _, results = evaluated
    path = damaged(os.path.join(results, scores.NAME), str(tmp_path / scores.NAME), EDITS[edit])
    with pytest.raises(UserError, match=r"scores file .*scores.csv.gz") as e:
        scores.read_scores(path)
    assert "\n" not in str(e.value)


@given(cut=st.integers(0, 10_000), byte=st.integers(0, 255))
def test_any_cut_or_flipped_byte_reads_or_is_one_line(evaluated, tmp_path_factory, cut, byte):
    _, _, results = evaluated
    data = bytearray(open(os.path.join(results, scores.NAME), "rb").read())
    data = data[: cut % (len(data) + 1)]
    if data:
        data[cut % len(data)] = byte
    path = tmp_path_factory.mktemp("flip") / scores.NAME
    path.write_bytes(bytes(data))
    try:
        rows = scores.read_scores(str(path))
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert all(r["status"] in scores.STATUSES for r in rows)


def test_compare_over_two_checkpoints_and_over_their_scores_files(evaluated, tmp_path):
    data, ckpts, results = evaluated
    said = run_test(data, str(tmp_path / "c1"), "--compare", *ckpts)
    assert "B - A, per generator" in said and "gen_a" in said and "ΔAP [95% CI]" in said
    compared = list(csv.DictReader(open(tmp_path / "c1" / "compare.csv", encoding="utf-8")))
    assert [r["generator"] for r in compared] == ["gen_a", "gen_b", "gen_c", "Mean"]
    assert compared[2]["d_ap"] == "nan" and compared[2]["d_acc"] != "nan"  # one class: no AP, an accuracy
    # the same from the scores files alone: no model is run, the numbers are the same
    one, two = tmp_path / "one", tmp_path / "two"
    run_test(data, str(one), "--model_path", ckpts[0])
    run_test(data, str(two), "--model_path", ckpts[1])
    run_test(data, str(tmp_path / "c2"), "--compare", str(one / scores.NAME), str(two / scores.NAME))
    again = list(csv.DictReader(open(tmp_path / "c2" / "compare.csv", encoding="utf-8")))
    assert again == compared


def test_compare_uses_the_images_both_saw_and_says_how_many(evaluated, tmp_path):
    data, ckpts, _ = evaluated
    fewer = tmp_path / "data"
    shutil.copytree(data, fewer)
    for name in sorted(os.listdir(fewer / "mysuite" / "gen_a" / "0_real"))[:2]:
        os.remove(fewer / "mysuite" / "gen_a" / "0_real" / name)
    run_test(str(fewer), str(tmp_path / "b"), "--model_path", ckpts[1])
    run_test(data, str(tmp_path / "a"), "--model_path", ckpts[0])
    said = run_test(data, str(tmp_path / "c"), "--compare", str(tmp_path / "a" / scores.NAME),
                    str(tmp_path / "b" / scores.NAME))
    assert "mysuite/gen_a: 10 images both scored (of 10-12)" in said
    assert [r["n_images"] for r in csv.DictReader(open(tmp_path / "c" / "compare.csv"))][0] == "10"


def test_compare_over_another_benchmarks_scores_is_one_line(evaluated, tmp_path):
    data, ckpts, results = evaluated
    other = tmp_path / "other"
    write_leaf(str(other / "mysuite" / "gen_z"), 3, 3, seed=9)
    run_test(str(other), str(tmp_path / "o"), "--model_path", ckpts[0])
    with pytest.raises(UserError, match="share no scored image"):
        run_test(data, str(tmp_path / "c"), "--compare", os.path.join(results, scores.NAME),
                 str(tmp_path / "o" / scores.NAME))


def test_compare_takes_two_groups_of_seeds(evaluated, tmp_path):
    data, ckpts, results = evaluated
    said = run_test(data, str(tmp_path / "g"), "--compare", ckpts[0], ckpts[1], "--", ckpts[1], ckpts[0])
    assert "(2 and 2 checkpoint(s))" in said and "and the checkpoints of each group" in said
    rows = list(csv.DictReader(open(tmp_path / "g" / "compare.csv")))
    assert all(float(r["d_acc"]) == 0 for r in rows)  # the same two checkpoints on each side
    with pytest.raises(UserError, match="--compare takes two detectors"):
        run_test(data, str(tmp_path / "x"), "--compare", *ckpts, ckpts[0])
