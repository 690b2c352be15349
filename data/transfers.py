"""Transfers of the downloader (``data.download``): a URL fetched to a file that is renamed into
place only once whole and checked, resuming an interrupted transfer with a range request, and
Google Drive through gdown. Written on urllib rather than a fetching library: pooch, the usual
choice for checksummed downloads, starts an interrupted transfer again from byte zero, and
resuming is what matters for archives of 19-72 GB."""
import os
import time
import urllib.error
import urllib.request
import zipfile

from tqdm import tqdm

from files import sha256_of

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without data before a transfer is given up (it resumes on the next run)
# A transfer slower than STALL_BYTES per STALL_SECONDS (1 KiB/s over a minute) is given up too:
# a server that drips a byte now and then never trips TIMEOUT. The next run resumes it.
STALL_SECONDS, STALL_BYTES = 60.0, 60 * 1024


class ChecksumError(Exception):
    """A file whose SHA-256 differs from the published one."""


def content_length(value):
    """Content-Length as an int, None when absent; a malformed one is an error that says so."""
    if value is None:
        return None
    if not value.strip().isdecimal():  # HTTP's 1*DIGIT
        raise OSError(f"the server sent an invalid Content-Length ({value!r})")
    return int(value)


def range_start_and_total(content_range):
    """(first byte, total or None) of a 'bytes a-b/N' or 'bytes */N' Content-Range; None if unreadable."""
    try:
        unit, spec = content_range.split(" ", 1)
        span, total = spec.split("/")
        first = None if span == "*" else int(span.split("-")[0])
        return first, None if total == "*" else int(total)
    except (AttributeError, ValueError):
        return None, None


def fetch_url(url, dest, sha256=None, progress=True, validate=None):
    """Download ``url`` to ``dest``, resuming ``dest.part`` with a range request where the server
    allows it. Renamed to ``dest`` only once whole: its length as the headers say, its SHA-256 the
    published one (else ``ChecksumError``) and ``validate(path)`` passed (else its ``ValueError``);
    a file refused is removed. A resume at the wrong byte, or HTTP 416 for a part that is whole,
    is handled; a stalled transfer is ``OSError`` and keeps the part for the next run."""
    part = dest + ".part"
    start = os.path.getsize(part) if os.path.exists(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "npr-reproduction/1.0"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    total = None
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:
            raise
        # Range not satisfiable: the partial file may already be whole (killed before the rename).
        _, total = range_start_and_total(e.headers.get("Content-Range"))
        if total != start:
            os.remove(part)
            raise OSError("the server refused to resume the partial file (HTTP 416); it was removed, run again "
                          "to download from the start") from None
        response = None
    if response is not None:
        with response:
            resumed = bool(start) and response.status == 206
            if resumed:
                first, total = range_start_and_total(response.headers.get("Content-Range"))
                if first != start:
                    os.remove(part)
                    raise OSError(f"the server resumed at byte {first} instead of {start}; the partial file was "
                                  "removed, run again to download from the start")
            length = content_length(response.headers.get("Content-Length"))
            if total is None and length is not None:
                total = length + (start if resumed else 0)
            with open(part, "ab" if resumed else "wb") as f, \
                    tqdm(total=total, initial=start if resumed else 0, unit="B", unit_scale=True,
                         desc=os.path.basename(dest), disable=None if progress else True) as bar:
                window_start, window_bytes = time.monotonic(), 0
                for block in iter(lambda: response.read1(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
                    window_bytes += len(block)
                    if time.monotonic() - window_start >= STALL_SECONDS:
                        if window_bytes < STALL_BYTES:
                            raise OSError(f"the transfer stalled ({window_bytes} bytes in the last "
                                          f"{STALL_SECONDS:.0f} s)")
                        window_start, window_bytes = time.monotonic(), 0
    if total is not None and os.path.getsize(part) != total:
        raise OSError(f"the transfer ended after {os.path.getsize(part)} of {total} bytes; run again to resume")
    if sha256 and sha256_of(part) != sha256:
        os.remove(part)
        raise ChecksumError(f"SHA-256 mismatch for {os.path.basename(dest)} (expected {sha256}); the file was removed")
    if validate is not None:
        try:
            validate(part)
        except ValueError:
            os.remove(part)
            raise
    os.replace(part, dest)
    return dest


def check_weights_file(path):
    """Raise ``ValueError`` unless ``path`` looks like a whole PyTorch checkpoint: a zip (what
    ``torch.save`` writes) whose end record is there, or a legacy pickle. An HTML page (a quota
    or login page saved under the checkpoint's name) or a cut-off file is refused."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            raise ValueError("a PyTorch checkpoint cut short (its zip directory is missing)")
        return
    if head[:1] == b"\x80":  # a legacy (pre-1.6) pickle checkpoint
        return
    shown = head[:32].decode("ascii", "replace").strip()
    what = "a web page (a quota or sign-in page?)" if b"<" in head[:16] else "not a PyTorch checkpoint"
    raise ValueError(f"the file is {what}, starting with {shown!r}")


def gdown_fetch(kind, drive_id, dest):
    """Google Drive through the gdown package: a file to the path ``dest``, or a folder's files
    into the folder ``dest``; returns the paths written. gdown resumes partial files itself."""
    try:
        import gdown  # optional: only Google Drive sources need it
    except ImportError:
        raise RuntimeError("the gdown package is not installed (pip install gdown)") from None
    if kind == "gdrive_file":
        out = gdown.download(id=drive_id, output=dest, quiet=False, resume=True)
        paths = [out] if out else []
    else:
        os.makedirs(dest, exist_ok=True)
        paths = gdown.download_folder(id=drive_id, output=dest, quiet=False, resume=True) or []
    if not paths:
        raise RuntimeError("gdown returned nothing (a quota limit or a link that no longer works)")
    return paths
