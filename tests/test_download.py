"""data/download.py against a local HTTP server (127.0.0.1) and a fake gdown: resumed transfers,
checksums, corrupt archives, weights files, the advice after a failure, downloads started at once, and a
disk that fills."""
import hashlib
import io
import os
import socket
import sys
import tarfile
import time
import types

import numpy as np
import pytest
import torch
from conftest import local_server, QuietHandler, race
from PIL import Image

import files
from data import download as dl
from data.benchmarks import Source, SOURCES


# ----------------------------------------------------------------------------- a local server

class Handler(QuietHandler):
    """Serves ``files`` with range requests; ``cut`` sends only that many bytes once, then hangs up."""
    files, cut, seen = {}, {}, []

    def do_GET(self):
        data = self.files.get(self.path)
        self.seen.append((self.path, self.headers.get("Range")))
        if data is None:
            self.send_error(404)
            return
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        n = self.cut.pop(self.path, None)
        self.wfile.write(data[start:] if n is None else data[start:start + n])
        self.close_connection = True


@pytest.fixture
def server():
    Handler.files, Handler.cut, Handler.seen = {}, {}, []
    with local_server(Handler) as base:
        yield base, Handler


def suite_tar(top="MySuite", n=3):
    """A tar.gz holding <top>/<gen>/{0_real,1_fake}/*.png."""
    tmp = io.BytesIO()
    with tarfile.open(fileobj=tmp, mode="w:gz") as tar:
        for label in ("0_real", "1_fake"):
            for i in range(n):
                buf = io.BytesIO()
                Image.fromarray(np.full((8, 8, 3), 40 * i + (label == "1_fake"), np.uint8)).save(buf, "PNG")
                info = tarfile.TarInfo(f"{top}/gen/{label}/{i}.png")
                info.size = len(buf.getvalue())
                tar.addfile(info, io.BytesIO(buf.getvalue()))
    return tmp.getvalue()


def source(url, **kw):
    return Source(**{"name": "MySuite", "kind": "url", "location": url, "archives": ("mysuite.tar.gz",),
                     "target": "MySuite", "manual": "https://example.org/manual", "suite": "MySuite", **kw})


def place(root, data):
    """``data`` put where the downloader looks for MySuite's archive, as a file downloaded by hand."""
    folder = root / ".downloads" / "MySuite"
    folder.mkdir(parents=True)
    (folder / "mysuite.tar.gz").write_bytes(data)
    return folder / "mysuite.tar.gz"


def test_resume_after_an_interrupted_transfer_then_skip_when_complete(server, tmp_path):
    base, h = server
    data = suite_tar()
    h.files["/a.tar.gz"] = data
    h.cut["/a.tar.gz"] = 100
    src, root = source(base + "/a.tar.gz"), str(tmp_path / "datasets")
    with pytest.raises(dl.DownloadError) as err:
        dl.download(src, root, progress=False)
    msg = str(err.value)
    assert "MySuite" in msg and "https://example.org/manual" in msg and "resumes" in msg and "\n" not in msg
    part = os.path.join(root, ".downloads", "MySuite", "mysuite.tar.gz.part")
    assert os.path.getsize(part) == 100
    target = dl.download(src, root, progress=False)
    assert h.seen[-1] == ("/a.tar.gz", "bytes=100-")  # resumed, not restarted
    assert sorted(os.listdir(os.path.join(target, "gen"))) == ["0_real", "1_fake"]
    assert len(os.listdir(os.path.join(target, "gen", "1_fake"))) == 3
    assert os.path.isfile(os.path.join(root, ".downloads", "MySuite.done"))
    assert not os.path.exists(os.path.join(root, ".downloads", "MySuite"))  # archive removed after extraction
    n = len(h.seen)
    assert dl.download(src, root, progress=False) == target and len(h.seen) == n  # complete: no request


def test_corrupt_archive_is_removed_and_reported(server, tmp_path):
    base, h = server
    h.files["/bad.tar.gz"] = b"\x1f\x8b" + os.urandom(500)
    root = str(tmp_path / "d")
    with pytest.raises(dl.DownloadError, match="corrupt") as err:
        dl.download(source(base + "/bad.tar.gz"), root, progress=False)
    assert "\n" not in str(err.value)
    assert not os.path.exists(os.path.join(root, ".downloads", "MySuite", "mysuite.tar.gz"))
    assert not os.path.exists(os.path.join(root, "MySuite"))


def test_checksum_mismatch_refused(server, tmp_path):
    base, h = server
    h.files["/a.tar.gz"] = suite_tar()
    src = source(base + "/a.tar.gz", sha256=(("mysuite.tar.gz", "0" * 64),))
    with pytest.raises(dl.DownloadError, match="SHA-256 mismatch"):
        dl.download(src, str(tmp_path / "d"), progress=False)
    assert not os.listdir(os.path.join(tmp_path, "d", ".downloads", "MySuite"))
    good = source(base + "/a.tar.gz", sha256=(("mysuite.tar.gz", hashlib.sha256(h.files["/a.tar.gz"]).hexdigest()),))
    assert os.path.isdir(dl.download(good, str(tmp_path / "d"), progress=False))


def test_weights_files_land_at_and_beside_weights_path(server, tmp_path):
    """NPR.pth goes to --weights_path, SAFE's checkpoint beside it under its own name, and the
    evaluation scripts read it as it is."""

    from networks import load_detector, resnet50
    base, h = server
    buf = io.BytesIO()
    torch.save({"model": resnet50(operator="dwt").state_dict(), "epoch": "best"}, buf)
    h.files["/SAFE/checkpoint-best.pth"] = buf.getvalue()
    buf = io.BytesIO()
    torch.save(resnet50().state_dict(), buf)
    h.files["/NPR.pth"] = buf.getvalue()
    safe = {s.name: s for s in SOURCES}["safe-weights"]
    npr = {s.name: s for s in SOURCES}["weights"]
    assert safe.location.endswith("Ouxiang-Li/SAFE/raw/main/checkpoint/checkpoint-best.pth") and not safe.target
    weights = str(tmp_path / "w" / "NPR.pth")
    got = dl.download(dl.replace(safe, location=base + "/SAFE/checkpoint-best.pth"), str(tmp_path), progress=False,
                      weights_path=weights)
    assert got == str(tmp_path / "w" / "SAFE-checkpoint-best.pth") and not os.path.exists(weights)
    assert dl.download(dl.replace(npr, location=base + "/NPR.pth"), str(tmp_path), progress=False,
                       weights_path=weights) == weights
    assert load_detector(got, device="cpu").operator == "dwt" and load_detector(weights, device="cpu").operator == "npr"


def test_refused_connection_and_missing_file_are_one_line(server, tmp_path):
    base, _ = server
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url, needle in ((f"http://127.0.0.1:{port}/x.tar.gz", "refused"), (base + "/missing.tar.gz", "HTTP 404")):
        with pytest.raises(dl.DownloadError) as err:
            dl.download(source(url), str(tmp_path / "d"), progress=False)
        assert needle in str(err.value) and "by hand" in str(err.value) and "\n" not in str(err.value)


def test_the_advice_after_a_failed_download_works_when_followed(server, tmp_path):
    """The advice named '<root>/.downloads/weights/' for NPR.pth, where the downloader never
    looks (it looks beside --weights_path): a file put there was downloaded again, and failed again."""
    import re


    from networks import resnet50
    with socket.socket() as s:  # a port nobody listens on: the download fails
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    weights = str(tmp_path / "w" / "NPR.pth")
    npr = dl.replace({s.name: s for s in SOURCES}["weights"], location=dead + "/NPR.pth")
    suite = source(dead + "/x.tar.gz")
    for src, put in ((npr, lambda p: torch.save(resnet50().state_dict(), p)),
                     (suite, lambda p: open(p, "wb").write(suite_tar()))):
        with pytest.raises(dl.DownloadError) as err:
            dl.download(src, str(tmp_path / "root"), progress=False, weights_path=weights)
        folder = re.search(r" and put \S+ in (.+), then run the command again", str(err.value)).group(1)
        put(os.path.join(folder, src.archives[0]))  # as told
        got = dl.download(src, str(tmp_path / "root"), progress=False, weights_path=weights)  # again, as told
        assert got == (weights if src is npr else str(tmp_path / "root" / "MySuite"))


@pytest.mark.parametrize("given", ["folder/", "existing folder"])
def test_weights_path_naming_a_folder_gets_npr_pth_inside_never_ready_without_a_file(server, tmp_path, given):
    """--weights_path /models/ said "weights: ready in /" with no file: the folder itself matched
    the archive's (empty) name."""

    from networks import load_detector, resnet50
    base, h = server
    buf = io.BytesIO()
    torch.save(resnet50().state_dict(), buf)
    h.files["/NPR.pth"] = buf.getvalue()
    npr = dl.replace({s.name: s for s in SOURCES}["weights"], location=base + "/NPR.pth")
    folder = tmp_path / "models"
    if given == "existing folder":
        folder.mkdir()
    weights_path = str(folder) + ("/" if given == "folder/" else "")
    got = dl.download(npr, str(tmp_path / "root"), progress=False, weights_path=weights_path)
    assert got == str(folder / "NPR.pth") and load_detector(got, device="cpu").operator == "npr"


def test_archive_placed_by_hand_is_used(tmp_path):
    root = str(tmp_path / "d")
    folder = os.path.join(root, ".downloads", "MySuite")
    os.makedirs(folder)
    with open(os.path.join(folder, "mysuite.tar.gz"), "wb") as f:
        f.write(suite_tar())
    target = dl.download(source("http://127.0.0.1:9/never"), root, progress=False)
    assert os.path.isdir(os.path.join(target, "gen", "0_real"))


def test_google_drive_goes_through_gdown(tmp_path, monkeypatch):
    calls = []

    def download_folder(id, output, quiet, resume):
        calls.append(("folder", id, output, resume))
        paths = []
        for name in ("AttGAN", "BEGAN"):
            p = os.path.join(output, f"{name}.tar.gz")
            with open(p, "wb") as f:
                f.write(suite_tar(top=name, n=2))
            paths.append(p)
        return paths

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download_folder=download_folder, download=None))
    src = Source("MyGANs", "gdrive_folder", "FOLDER_ID", ("*.tar.gz",), "MyGANs", manual="https://example.org")
    target = dl.download(src, str(tmp_path / "d"), progress=False)
    assert calls == [("folder", "FOLDER_ID", os.path.join(str(tmp_path / "d"), ".downloads", "MyGANs"), True)]
    assert sorted(os.listdir(target)) == ["AttGAN", "BEGAN"]
    assert len(os.listdir(os.path.join(target, "AttGAN", "gen", "0_real"))) == 2


def test_gdown_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", None)  # import gdown -> ImportError
    src = Source("X", "gdrive_file", "ID", ("x.zip",), "X", manual="https://example.org")
    with pytest.raises(dl.DownloadError, match="pip install gdown"):
        dl.download(src, str(tmp_path / "d"), progress=False)


@pytest.mark.parametrize("what", ["suite", "weights"])
def test_downloads_started_at_once_fetch_once_and_all_end_ready(server, tmp_path, monkeypatch, what):
    """The same command in two terminals, or on every node of a job: both appended to one .part
    file and extracted into one staging folder. Now one downloads, the others wait and find it."""

    import torch

    from networks import resnet50
    base, h = server
    buf = io.BytesIO()
    torch.save(resnet50().state_dict(), buf)
    h.files["/a.tar.gz"], h.files["/NPR.pth"] = suite_tar(), buf.getvalue()
    serve = h.do_GET

    def slowly(self):  # a transfer long enough for the others to start theirs
        time.sleep(0.5)
        serve(self)
    monkeypatch.setattr(h, "do_GET", slowly)
    src = source(base + "/a.tar.gz") if what == "suite" else \
        dl.replace({s.name: s for s in SOURCES}["weights"], location=base + "/NPR.pth")
    weights = str(tmp_path / "NPR.pth")
    assert race(lambda: dl.download(src, str(tmp_path / "d"), progress=False, weights_path=weights), 3) == [0, 0, 0]
    assert len([s for s in h.seen if s[0] in ("/a.tar.gz", "/NPR.pth")]) == 1
    if what == "suite":
        assert sorted(os.listdir(tmp_path / "d" / "MySuite" / "gen" / "0_real")) == ["0.png", "1.png", "2.png"]
    else:
        assert open(weights, "rb").read() == buf.getvalue()


def test_a_full_disk_keeps_the_archive(tmp_path, monkeypatch):
    root = tmp_path / "d"
    folder = root / ".downloads" / "MySuite"
    folder.mkdir(parents=True)
    (folder / "mysuite.tar.gz").write_bytes(suite_tar())
    real = files.shutil.disk_usage
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: real(p)._replace(free=10))
    with pytest.raises(dl.DownloadError, match="GB free in .* only 0.00 GB are") as err:
        dl.download(source("http://127.0.0.1:9/never"), str(root), progress=False)
    assert "the archive is kept" in str(err.value) and "corrupt" not in str(err.value)
    assert (folder / "mysuite.tar.gz").exists() and not (root / "MySuite").exists()
    monkeypatch.setattr(files.shutil, "disk_usage", real)
    assert os.path.isdir(dl.download(source("http://127.0.0.1:9/never"), str(root), progress=False))


def test_a_published_checksum_applies_to_an_archive_placed_by_hand(tmp_path):
    place(tmp_path, suite_tar())
    src = source("http://127.0.0.1:9/never", sha256=(("mysuite.tar.gz", "0" * 64),))
    with pytest.raises(dl.DownloadError, match="does not match the published SHA-256"):
        dl.download(src, str(tmp_path), progress=False)
