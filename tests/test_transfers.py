"""data/transfers.py where a server misbehaves or a file is not what it claims: weights that are a web
page or cut short, a resume at the wrong offset, HTTP 416 on a whole file, a malformed Content-Length, a
server that drips (servers on 127.0.0.1 only; every transfer here is bounded)."""
import io
import os
import time

import pytest
import torch
from conftest import local_server, QuietHandler
from test_download import source, suite_tar

from data import download as dl
from data import transfers


class Odd(QuietHandler):
    """Serves ``files``; ``how[path]`` picks a misbehaviour: 'no-length-cut' (no Content-Length,
    half the body), 'bad-length', 'wrong-range' (resumes at byte 0 with a 206), 'drip' (a byte
    every 0.5 s), '416' (refuses every range with 'bytes */N')."""
    files, how = {}, {}

    def do_GET(self):
        data, how = self.files.get(self.path), self.how.get(self.path)
        rng = self.headers.get("Range")
        if how == "416" and rng:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        if how == "wrong-range" and rng:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        if how == "bad-length":
            self.send_header("Content-Length", "abc")
        elif how not in ("no-length-cut", "drip"):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if how == "no-length-cut":
            self.wfile.write(data[: len(data) // 2])
        elif how == "drip":
            for i in range(40):  # 20 s at most
                try:
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.5)
        else:
            self.wfile.write(data)
        self.close_connection = True


@pytest.fixture
def odd():
    Odd.files, Odd.how = {}, {}
    with local_server(Odd) as base:
        yield base, Odd


def checkpoint_bytes():
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    return buf.getvalue()


def weights_source(url):
    return dl.replace({s.name: s for s in dl.SOURCES}["weights"], location=url)


def test_weights_that_are_a_web_page_or_cut_short_are_refused(odd, tmp_path):
    base, h = odd
    h.files["/page.pth"] = b"<!DOCTYPE html><html><body>Quota exceeded</body></html>"
    h.files["/cut.pth"] = checkpoint_bytes()
    h.how["/cut.pth"] = "no-length-cut"
    for name, needle in (("page", "a web page"), ("cut", "cut short")):
        path = str(tmp_path / f"{name}.pth")
        with pytest.raises(dl.DownloadError, match=needle):
            dl.download(weights_source(f"{base}/{name}.pth"), str(tmp_path), progress=False, weights_path=path)
        assert not os.path.exists(path) and not os.path.exists(path + ".part")
    (tmp_path / "kept.pth").write_bytes(b"<html>old quota page</html>")
    with pytest.raises(dl.DownloadError, match="is there but the file is a web page"):
        dl.download(weights_source(f"{base}/cut.pth"), str(tmp_path), progress=False,
                    weights_path=str(tmp_path / "kept.pth"))


def test_a_wrong_resume_offset_is_not_appended(odd, tmp_path):
    base, h = odd
    data = checkpoint_bytes()
    h.files["/w.pth"], h.how["/w.pth"] = data, "wrong-range"
    path = str(tmp_path / "w.pth")
    with open(path + ".part", "wb") as f:
        f.write(data[:100])
    with pytest.raises(dl.DownloadError, match="resumed at byte 0 instead of 100"):
        dl.download(weights_source(base + "/w.pth"), str(tmp_path), progress=False, weights_path=path)
    assert not os.path.exists(path + ".part")
    assert dl.download(weights_source(base + "/w.pth"), str(tmp_path), progress=False, weights_path=path) == path
    assert open(path, "rb").read() == data


def test_a_complete_part_file_answered_416_is_finished(odd, tmp_path):
    base, h = odd
    data = checkpoint_bytes()
    h.files["/w.pth"], h.how["/w.pth"] = data, "416"
    path = str(tmp_path / "w.pth")
    with open(path + ".part", "wb") as f:  # killed between the last write and the rename
        f.write(data)
    assert dl.download(weights_source(base + "/w.pth"), str(tmp_path), progress=False, weights_path=path) == path
    assert open(path, "rb").read() == data


def test_a_malformed_content_length_is_named(odd, tmp_path):
    base, h = odd
    h.files["/a.tar.gz"], h.how["/a.tar.gz"] = suite_tar(), "bad-length"
    with pytest.raises(dl.DownloadError, match=r"invalid Content-Length \('abc'\)") as err:
        dl.download(source(base + "/a.tar.gz"), str(tmp_path / "d"), progress=False)
    assert "checksum" not in str(err.value)


@pytest.mark.slow
def test_a_drip_server_is_abandoned_and_the_part_kept(odd, tmp_path, monkeypatch):
    base, h = odd
    h.files["/a.tar.gz"], h.how["/a.tar.gz"] = suite_tar(), "drip"
    monkeypatch.setattr(transfers, "STALL_SECONDS", 2.0)
    monkeypatch.setattr(transfers, "STALL_BYTES", 100)
    start = time.time()
    with pytest.raises(dl.DownloadError, match="stalled") as err:
        dl.download(source(base + "/a.tar.gz"), str(tmp_path / "d"), progress=False)
    assert time.time() - start < 15 and "resumes" in str(err.value)
