"""files.py: atomic writes (whole or not at all, any name, links replaced, concurrent writers), the one
output check scripts call before long work, and locks that never hang on what is planted at their path."""
import errno
import importlib
import os
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from files import atomic_file, writing
from util import UserError


@given(old=st.binary(max_size=64), new=st.binary(max_size=64), fail_after=st.one_of(st.none(), st.integers(0, 3)))
def test_an_atomic_write_is_whole_or_not_at_all(tmp_path_factory, old, new, fail_after):
    folder = tmp_path_factory.mktemp("w")
    path = folder / "results.json"
    path.write_bytes(old)
    try:
        with atomic_file(str(path), "wb") as f:
            for i, b in enumerate(new):
                if fail_after is not None and i == fail_after:
                    raise KeyboardInterrupt  # killed halfway
                f.write(bytes([b]))
            if fail_after is not None and fail_after >= len(new):
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        assert path.read_bytes() == old
    else:
        assert path.read_bytes() == new
    assert os.listdir(folder) == ["results.json"]  # no temporary file left


# names of 1 to 255 bytes of one character of 1, 2, 3 or 4 bytes in UTF-8, the longest forced in
NAMES = st.sampled_from("aé€😀").flatmap(lambda c: st.one_of(st.just(255 // len(c.encode())),
                                                             st.integers(1, 255 // len(c.encode()))).map(lambda k: c * k))


@given(name=NAMES)
def test_any_name_the_file_system_takes_can_be_written_atomically_and_as_a_checkpoint(tmp_path_factory, name):
    """The temporary file beside a 240-byte name went over 255 bytes: a scan's results, written at
    its end, failed after all its work."""
    from networks import load_checkpoint, save_checkpoint
    folder = tmp_path_factory.mktemp("names")
    with atomic_file(str(folder / name), "w") as f:
        f.write("x")
    assert (folder / name).read_text() == "x"
    save_checkpoint({"a": 1}, str(folder / name))
    assert load_checkpoint(str(folder / name)) == {"a": 1} and os.listdir(folder) == [name]


def test_a_link_at_the_path_is_replaced_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("keep me")
    (tmp_path / "out.csv").symlink_to(elsewhere)
    with atomic_file(str(tmp_path / "out.csv")) as f:
        f.write("a,b\n")
    assert elsewhere.read_text() == "keep me" and not (tmp_path / "out.csv").is_symlink()
    assert (tmp_path / "out.csv").read_text() == "a,b\n"


def test_concurrent_writers_each_leave_a_whole_file(tmp_path):
    path = str(tmp_path / "r.json")
    texts = [str(i) * 10_000 for i in range(8)]

    def write(t):
        with atomic_file(path) as f:
            for c in range(0, len(t), 100):
                f.write(t[c:c + 100])
    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert open(path).read() in texts and os.listdir(tmp_path) == ["r.json"]


@pytest.mark.parametrize("script", ["bench", "gpu_check"])
def test_a_report_folder_that_is_a_file_is_one_line_before_any_measuring(tmp_path, script, monkeypatch):
    """bench.py made its --output folder after minutes of measuring, and failed there."""

    from util import UserError
    module = importlib.import_module(script)
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(module, "torch", None)  # any use of torch before the check fails the test
    with pytest.raises(UserError, match="--output .* is a file, not a folder"):
        module.main(["--output", str(tmp_path / "file")])


@pytest.mark.parametrize("planted", ["a FIFO", "a folder"])
def test_a_waiting_lock_with_something_planted_at_its_path_is_one_line_never_a_hang(tmp_path, planted):
    """A FIFO planted at a lock's path was taken as the lock file; now anything but a regular file
    is one line, and opening never blocks (O_NONBLOCK), so the test cannot hang."""
    from files import waiting_lock
    from util import UserError
    path = tmp_path / "x.lock"
    os.mkfifo(path) if planted == "a FIFO" else path.mkdir()
    said = []

    def take():
        try:
            with waiting_lock(str(path), "testing"):
                said.append("held")
        except UserError as e:
            said.append(str(e))
    t = threading.Thread(target=take, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and len(said) == 1 and "remove what is in the way" in said[0]


@given(code=st.sampled_from(sorted(errno.errorcode)), kept=st.sampled_from(["", "; the results there are as they were"]))
def test_a_write_that_fails_is_one_line_whose_advice_fits_the_error(code, kept):
    """Any OSError inside ``writing`` is one UserError naming what, why, what was kept and the
    option; freeing space is advised exactly when space is what ran out."""
    with pytest.raises(UserError) as err, writing("results.csv", "--results_dir", kept):
        raise OSError(code, os.strerror(code))
    said = str(err.value)
    assert "\n" not in said and said.startswith(f"cannot write results.csv ({os.strerror(code)}){kept}")
    assert said.endswith("--results_dir, and run again")
    assert ("free some space" in said) == (code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG))


def test_writing_lets_other_errors_through():
    with pytest.raises(ValueError), writing("x", "--output"):
        raise ValueError("not a file system's error")

