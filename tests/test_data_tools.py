"""The downloader against a local HTTP server (127.0.0.1) and a fake gdown, and the verifier
on small suites built here: counts, broken and duplicate files, format bias."""
import hashlib
import io
import json
import os
import shutil
import socket
import struct
import sys
import tarfile
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import run_script, write_leaf
from PIL import Image

from data.benchmarks import SOURCES, Source
from data import archives
from data import download as dl
from data.verification import format_report, jpeg_quality, verify

# ----------------------------------------------------------------------------- a local server

class Handler(BaseHTTPRequestHandler):
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

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.files, Handler.cut, Handler.seen = {}, {}, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", Handler
    httpd.shutdown()
    httpd.server_close()


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
    import torch

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

    import torch

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
    import torch

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


def make_split_zip(folder, files, part_size=300):
    """A PKZIP split archive (x.z01, x.z02, ..., x.zip): the spanning marker, local entries cut
    into parts, the central directory in the last part with per-part offsets."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    data = buf.getvalue()
    eocd = data.rfind(b"PK\x05\x06")
    _, _, _, _, n, cd_size, cd_offset, _ = struct.unpack("<4sHHHHIIH", data[eocd:eocd + 22])
    body = b"PK\x07\x08" + data[:cd_offset]
    parts = [body[i:i + part_size] for i in range(0, len(body), part_size)]
    last = len(parts)
    cd = bytearray(data[cd_offset:cd_offset + cd_size])
    pos = 0
    for _ in range(n):
        name_len, extra_len, comment_len = struct.unpack("<HHH", cd[pos + 28:pos + 34])
        local = struct.unpack("<I", cd[pos + 42:pos + 46])[0] + 4
        struct.pack_into("<H", cd, pos + 34, local // part_size)
        struct.pack_into("<I", cd, pos + 42, local % part_size)
        pos += 46 + name_len + extra_len + comment_len
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", last, last, n, n, cd_size, 0, 0)
    for i, p in enumerate(parts):
        with open(os.path.join(folder, f"test.z{i + 1:02d}"), "wb") as f:
            f.write(p)
    with open(os.path.join(folder, "test.zip"), "wb") as f:
        f.write(bytes(cd) + end)


@pytest.mark.parametrize("with_zip_tool", [True, False])
def test_split_zip_is_joined_and_extracted(tmp_path, monkeypatch, with_zip_tool):
    if not with_zip_tool:
        monkeypatch.setattr(archives.shutil, "which", lambda name: None)
    elif not shutil.which("zip"):
        pytest.skip("the zip tool is not installed; the pure-Python join is tested without it")
    root = str(tmp_path / "d")
    folder = os.path.join(root, ".downloads", "AIGCDetectBenchmark")
    os.makedirs(folder)
    files = {f"test/progan/{lab}/{i}.bin": os.urandom(150) for lab in ("0_real", "1_fake") for i in range(4)}
    make_split_zip(folder, files)
    src = next(s for s in SOURCES if s.name == "AIGCDetectBenchmark")
    target = dl.download(src, root, progress=False)
    for name, data in files.items():
        with open(os.path.join(target, *name.split("/")[1:]), "rb") as f:
            assert f.read() == data, name


@pytest.mark.slow
def test_cli_lists_sources_and_refuses_unknown_names(tmp_path):
    r = run_script("-m", "tools.download", "--list")
    assert r.returncode == 0 and "GANGen-Detection" in r.stdout and "weights" in r.stdout
    r = run_script("-m", "tools.download", "--root", str(tmp_path), "NoSuchSuite")
    assert r.returncode == 2 and "unknown source" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_script("-m", "tools.download", "--root", str(tmp_path), "GenImage")
    assert r.returncode == 2 and "github.com/GenImage-Dataset" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- the verifier

def save(path, arr, fmt, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path, fmt, **kw)


def noise(seed, size=(32, 32)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.mark.parametrize("quality", [30, 75, 90, 95])
def test_jpeg_quality_is_estimated_from_the_quantisation_tables(tmp_path, quality):
    path = str(tmp_path / "q.jpg")
    save(path, noise(0), "JPEG", quality=quality)
    with Image.open(path) as img:
        assert abs(jpeg_quality(img.quantization) - quality) <= 1


@pytest.fixture
def suites(tmp_path):
    root = tmp_path / "datasets"
    gg = root / "GANGen-Detection"
    for i in range(3):  # AttGAN: real JPEG, fake PNG -> format bias (and not the published 2k)
        save(str(gg / "AttGAN" / "0_real" / f"{i}.jpg"), noise(i), "JPEG", quality=80)
        save(str(gg / "AttGAN" / "1_fake" / f"{i}.png"), noise(10 + i), "PNG")
    for i in range(4):  # BEGAN: clean PNGs of one size, plus a duplicate and a truncated file
        save(str(gg / "BEGAN" / "0_real" / f"{i}.png"), noise(20 + i), "PNG")
        save(str(gg / "BEGAN" / "1_fake" / f"{i}.png"), noise(30 + i), "PNG")
    shutil.copy(gg / "BEGAN" / "0_real" / "0.png", gg / "BEGAN" / "1_fake" / "copy.png")
    good = (gg / "BEGAN" / "1_fake" / "1.png").read_bytes()
    (gg / "BEGAN" / "1_fake" / "cut.png").write_bytes(good[:len(good) // 2])
    (gg / "BEGAN" / "0_real" / "broken.png").write_bytes(b"not an image")
    write_leaf(str(gg / "GANimation"), 1, 1, size=(16, 16))  # not in the registry: an extra folder
    # a training root whose test split repeats a training file
    write_leaf(str(root / "train" / "car"), 2, 2, size=(16, 16), seed=1)
    write_leaf(str(root / "test" / "progan"), 2, 2, size=(16, 16), seed=2)
    shutil.copy(root / "train" / "car" / "0_real" / os.listdir(root / "train" / "car" / "0_real")[0],
                root / "test" / "progan" / "0_real" / "leak.png")
    return root


def test_verifier_flags_counts_format_bias_duplicates_and_broken_files(suites):
    report = verify(str(suites), workers=1)
    gg = next(s for s in report["suites"] if s["suite"] == "GANGen-Detection")
    gens = {g["generator"]: g for g in gg["generators"]}
    att, began = gens["AttGAN"], gens["BEGAN"]
    assert att["count_status"] == "mismatch" and "6 images, published 2000" in att["count"]
    assert any("format bias: 100% of real and 0% of fake images are JPEG" in b for b in att["bias"])
    assert att["real"]["jpeg_quality_mean"] == pytest.approx(80, abs=1)
    assert len(began["duplicates"]) == 1 and "1 duplicate file" in began["verdict"]
    assert began["truncated_files"][0].endswith("cut.png") and began["unreadable_files"][0].endswith("broken.png")
    assert not began["bias"]
    assert "GANimation" in gg["extra"] and "SNGAN" in gg["missing"]
    assert any(any(p.endswith("leak.png") for p in group) for group in report["cross_split_duplicates"])
    text = format_report(report)
    assert "format bias" in text and "published 2000" in text and "extra folders" in text


@pytest.mark.slow
def test_verify_cli_prints_the_table_and_writes_json(suites, tmp_path):
    out = str(tmp_path / "report.json")
    r = run_script("-m", "tools.verify", "--dataroot", str(suites), "--suites", "GANGen-Detection",
                   "--json", out, "--num_threads", "1", timeout=300)
    assert r.returncode == 0, r.stderr
    assert "AttGAN" in r.stdout and "format bias" in r.stdout and "published" in r.stdout
    data = json.load(open(out))
    assert [s["suite"] for s in data["suites"]] == ["GANGen-Detection"]


@pytest.mark.slow
def test_test_py_checks_the_data_first(suites, tmp_path):
    import torch

    from networks import resnet50
    torch.save(resnet50().state_dict(), str(tmp_path / "m.pth"))
    res = str(tmp_path / "res")
    r = run_script("test.py", "--dataroot", str(suites), "--model_path", str(tmp_path / "m.pth"),
                   "--suites", "GANGen-Detection", "--check_data", "--gpu_ids", "-1", "--num_threads", "0",
                   "--results_dir", res, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Data check" in r.stdout and "format bias" in r.stdout and "AttGAN" in r.stdout
    assert json.load(open(os.path.join(res, "data_check.json")))["suites"][0]["suite"] == "GANGen-Detection"


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


@pytest.mark.parametrize("what", ["suite", "weights"])
def test_downloads_started_at_once_fetch_once_and_all_end_ready(server, tmp_path, monkeypatch, what):
    """The same command in two terminals, or on every node of a job: both appended to one .part
    file and extracted into one staging folder. Now one downloads, the others wait and find it."""
    import multiprocessing
    import time

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
    ctx = multiprocessing.get_context("fork")
    go = ctx.Event()

    def run():
        go.wait()
        dl.download(src, str(tmp_path / "d"), progress=False, weights_path=weights)
    procs = [ctx.Process(target=run) for _ in range(3)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len([s for s in h.seen if s[0] in ("/a.tar.gz", "/NPR.pth")]) == 1
    if what == "suite":
        assert sorted(os.listdir(tmp_path / "d" / "MySuite" / "gen" / "0_real")) == ["0.png", "1.png", "2.png"]
    else:
        assert open(weights, "rb").read() == buf.getvalue()
