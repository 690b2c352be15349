"""Fetch the paper's benchmark and weights (the sources in ``data/benchmarks.py``), on purpose only.

    python -m tools.download --list
    python -m tools.download --root ./datasets ForenSynths GANGen-Detection DiffusionForensics
    python -m tools.download --root ./datasets all         # every scripted source
    python -m tools.download weights                       # NPR.pth, to --weights_path
    python -m tools.download safe-weights                  # SAFE's checkpoint, beside it

Archives go to ``<root>/.downloads/<name>/``; an interrupted transfer resumes where it stopped (HTTP
range requests; gdown's own resume for Google Drive). A source is skipped when its marker
``<root>/.downloads/<name>.done`` says it was downloaded, checked and extracted. Archives are
checked (size and SHA-256 where published, and that they open), extracted (tar.gz, zip,
split zip) into the folder ``test.py`` discovers, then deleted unless ``--keep_archives``.
An archive you downloaded by hand and put in ``<root>/.downloads/<name>/`` is used as it is.

A file is renamed into place only once it is whole and checked; only an archive that cannot be
read is ever deleted (docs/troubleshooting.md lists what each failure says). The transfers are
written on urllib rather than a fetching library: pooch, the usual choice for checksummed
downloads, starts an interrupted transfer again from byte zero, and resuming is what matters for
archives of 19-72 GB.

A failed or refused download ends with one line naming the source and the manual link.
Google Drive needs the ``gdown`` package (``pip install gdown``); nothing here runs on import.
"""
import glob
import http.client
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import replace

from tqdm import tqdm

from data.benchmarks import SOURCES, SUITES, locate_generator, source_by_name
from options.base_options import OneLineErrorParser
from data.verification import class_files, count_check
from util import UserError, inside_if_folder, run_cli, setup_logging, sha256_of, waiting_lock, write_json_atomically

CHUNK = 1 << 20
TIMEOUT = 60  # seconds without data before a transfer is given up (it resumes on the next run)
# A transfer slower than STALL_BYTES per STALL_SECONDS (1 KiB/s over a minute) is given up too:
# a server that drips a byte now and then never trips TIMEOUT. The next run resumes it.
STALL_SECONDS, STALL_BYTES = 60.0, 60 * 1024


class DownloadError(UserError):
    """A download, check or extraction that failed; the message names the source and what to do."""


class ChecksumError(Exception):
    """A file whose SHA-256 differs from the published one."""


class UnsafeArchiveError(Exception):
    """An archive with an entry that would be written outside the target folder, or a link out of it."""


def failure(source, what, reason, folder):
    """The one-line error of a failed step; ``folder`` is where the downloader looks for the
    archives (``<root>/.downloads/<name>/``, or the folder of ``--weights_path`` for weights), so
    that a file downloaded by hand and put there is used by the next run."""
    reason = " ".join(str(reason).split())  # one line, whatever the library said
    manual = f" Download it by hand from {source.manual}" if source.manual else ""
    where = f" and put {', '.join(source.archives)} in {folder}," if source.archives else ","
    return DownloadError(f"{source.name}: {what} failed ({reason}).{manual}{where} then run the command again.")


# ----------------------------------------------------------------------------- transfers

def content_length(value):
    """Content-Length as an int, None when absent; a malformed one is an error that says so."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise OSError(f"the server sent an invalid Content-Length ({value!r})")
    return n


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
    """Download ``url`` to ``dest``, resuming ``dest.part`` with a range request when the server
    allows it (otherwise from the start). The file is renamed to ``dest`` only once it is
    whole: its length matches Content-Length / Content-Range, its SHA-256 the published one
    (``ChecksumError``; the file is removed) and ``validate(path)`` passes (it raises
    ``ValueError``; the file is removed). A server that resumes at another byte than asked, or
    refuses to resume a partial file that is in fact complete (HTTP 416), is handled; a stalled
    transfer raises ``OSError`` and keeps the partial file for the next run."""
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


def matching(folder, patterns):
    """The files in ``folder`` that the archive names (or patterns) match; folders never do."""
    return sorted({p for pattern in patterns if pattern for p in glob.glob(os.path.join(folder, pattern))
                   if not p.endswith(".part") and os.path.isfile(p)})


def check_placed(source, paths):
    """Apply the published SHA-256 (where there is one) to archives already in place."""
    published = dict(source.sha256)
    for p in paths:
        expected = published.get(os.path.basename(p))
        if expected and sha256_of(p) != expected:
            raise DownloadError(f"{source.name}: {p} does not match the published SHA-256 ({expected}); remove it "
                                "(the next run downloads it anew) or put the right file there")
    return paths


def fetch(source, folder, progress=True, validate=None):
    """The archives of ``source`` in ``folder``: those already there (downloaded before, or put
    there by hand; checked against the published SHA-256), else fetched now."""
    incomplete = os.path.join(folder, ".incomplete")
    present = matching(folder, source.archives)
    if present and not os.path.exists(incomplete) and all(matching(folder, [a]) for a in source.archives
                                                           if "*" not in a):
        return check_placed(source, present)
    try:
        if source.kind == "url":
            dest = os.path.join(folder, source.archives[0])
            return [fetch_url(source.location, dest, dict(source.sha256).get(source.archives[0]), progress, validate)]
        if source.kind in ("gdrive_file", "gdrive_folder"):
            open(incomplete, "w").close()  # a folder download is whole only when gdown returns
            target = os.path.join(folder, source.archives[0]) if source.kind == "gdrive_file" else folder
            gdown_fetch(source.kind, source.location, target)
            os.remove(incomplete)
            return matching(folder, source.archives)
    except urllib.error.HTTPError as e:
        raise failure(source, f"the download of {source.url}", f"HTTP {e.code} {e.reason}", folder) from None
    except urllib.error.URLError as e:
        raise failure(source, f"the download of {source.url}", str(e.reason), folder) from None
    except ChecksumError as e:
        raise failure(source, "the checksum", str(e), folder) from None
    except ValueError as e:  # validate() refused the file
        raise failure(source, f"the download of {source.url}", f"{e}; the file was removed", folder) from None
    except (OSError, RuntimeError, http.client.HTTPException) as e:
        reason = str(e) or type(e).__name__
        if os.path.exists(os.path.join(folder, source.archives[0] + ".part")):
            reason += "; the partial file is kept and the next run resumes it"
        raise failure(source, f"the download of {source.url}", reason, folder) from None
    raise DownloadError(f"{source.name}: no scripted download; get it by hand from {source.manual}")


# ----------------------------------------------------------------------------- archives

def archive_kind(path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    return None


def split_parts(path):
    """The parts of a split zip whose last part is ``path`` (x.zip with x.z01, x.z02, ...), in order."""
    stem = os.path.splitext(path)[0]
    parts = sorted(glob.glob(stem + ".z[0-9][0-9]*"))
    return parts + [path] if parts else []


def join_split_zip(parts, out):
    """Join a split zip (PKZIP spanning: x.z01 ... x.zip) into one ordinary zip ``out``: the
    parts are concatenated, and the central directory's disk numbers and offsets, which count
    from the start of each part, are rewritten as offsets into the whole (what ``zip -s-``
    does), reading no more than the directory into memory. Zip64 archives are left to the
    ``zip`` tool."""
    if shutil.which("zip") and subprocess.run(["zip", "-q", "-s-", parts[-1], "-O", out]).returncode == 0:
        return out
    starts, total = [], 0
    for p in parts:
        starts.append(total)
        total += os.path.getsize(p)
    with open(out, "wb") as f:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f, CHUNK)
    # Only the central directory and its end record are rewritten, in place; the leading
    # spanning marker stays (readers skip data before the first entry).
    with open(out, "r+b") as f:
        f.seek(max(0, total - (1 << 16) - 22))
        tail = f.read()
        eocd = tail.rfind(b"PK\x05\x06")
        if eocd < 0:
            raise ValueError("no end of central directory: not a zip")
        _, _, cd_disk, _, n_entries, cd_size, cd_offset, comment_len = struct.unpack("<4sHHHHIIH", tail[eocd:eocd + 22])
        if 0xFFFFFFFF in (cd_offset, cd_size) or n_entries == 0xFFFF:
            raise ValueError("a Zip64 split archive: join it with `zip -s- test.zip -O joined.zip` (apt-get install zip)")
        cd_start = starts[cd_disk] + cd_offset
        f.seek(cd_start)
        cd = bytearray(f.read(cd_size))
        pos = 0
        for _ in range(n_entries):
            if cd[pos:pos + 4] != b"PK\x01\x02":
                raise ValueError("a broken central directory")
            name_len, extra_len, comment_len_entry, disk = struct.unpack("<HHHH", cd[pos + 28:pos + 36])
            local = struct.unpack("<I", cd[pos + 42:pos + 46])[0]
            struct.pack_into("<H", cd, pos + 34, 0)
            struct.pack_into("<I", cd, pos + 42, starts[disk] + local)
            pos += 46 + name_len + extra_len + comment_len_entry
        f.seek(cd_start)
        f.write(cd)
        f.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n_entries, n_entries, cd_size, cd_start, comment_len))
        f.truncate()
        f.write(tail[eocd + 22:eocd + 22 + comment_len])
    return out


def check_space(dest, needed, what):
    """Raise ``OSError`` (no space) when ``dest``'s disk has less than ``needed`` bytes free."""
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise OSError(28, f"{what} needs {needed / 1e9:.2f} GB free in {dest}, only {free / 1e9:.2f} GB are; free "
                          "space or use another --root, then run again")


def check_tar_end(tar):
    """Raise ``ValueError`` unless the last member read is followed by the end-of-archive marker
    (at least two zero blocks) and nothing but zeros. tarfile takes a header it cannot read for
    the end of the archive, so a member whose header understates its size, or an archive cut at
    a member boundary, would otherwise extract in part without a word."""
    f = tar.fileobj
    f.seek(tar.offset)  # a step back within the read buffer, also in a gzip stream
    zeros = 0
    while block := f.read(CHUNK):
        if block.strip(b"\0"):
            raise ValueError(f"unreadable data at byte {tar.offset + zeros} after the last member that could be read "
                             f"({tar.getmembers()[-1].name if tar.getmembers() else 'none'}): a member's header "
                             "does not match its data, or the archive is damaged")
        zeros += len(block)
    if zeros < 2 * tarfile.BLOCKSIZE:
        raise ValueError(f"the archive ends at byte {tar.offset + zeros} without its end-of-archive marker: it was "
                         "cut short")


def check_tar_padding(tar, member):
    """Raise ``ValueError`` unless the bytes between a regular member's data and the next 512-byte
    block are zeros, as every tar writer pads them: a header that understates its size by less
    than a block leaves the rest of the data there, where tarfile skips it."""
    pad = -member.size % tarfile.BLOCKSIZE
    if not member.isreg() or not pad:
        return
    tar.fileobj.seek(member.offset_data + member.size)
    if tar.fileobj.read(pad).strip(b"\0"):
        raise ValueError(f"the member {member.name} has more data than its header's size of {member.size} bytes: "
                         "its header does not match its data, or the archive is damaged")


def extract(path, dest):
    """Extract a tar(.gz) or zip archive into ``dest``: no path may leave it (``UnsafeArchiveError``),
    the free space is checked against the sizes the archive declares (the zip's directory up
    front, each tar member before it is written), and a tar must end with its end-of-archive
    marker (``check_tar_end``)."""
    kind = archive_kind(path)
    if kind in ("tar.gz", "tar"):
        root = os.path.realpath(dest)
        with tarfile.open(path, "r:gz" if kind == "tar.gz" else "r:") as tar:
            for m in tar:
                if m.name.startswith(("/", "\\")) or os.path.isabs(m.name):  # the data filter would strip the "/"
                    raise UnsafeArchiveError(f"the entry '{m.name}' has an absolute path")
                check_space(dest, m.size, f"extracting {m.name} ({m.size} bytes)")
                if hasattr(tarfile, "data_filter"):
                    try:  # refuses absolute paths, '..', links out of dest, devices
                        tar.extract(m, dest, filter="data")
                    except tarfile.FilterError as e:
                        raise UnsafeArchiveError(str(e)) from None
                else:  # Python before 3.11.4 / 3.10.12 / 3.9.17
                    if not os.path.realpath(os.path.join(dest, m.name)).startswith(root + os.sep) or m.issym() \
                            or m.islnk() or m.isdev():
                        raise UnsafeArchiveError(f"the entry '{m.name}' would be written outside {dest}")
                    tar.extract(m, dest)
                check_tar_padding(tar, m)
            check_tar_end(tar)
    elif kind == "zip":
        with zipfile.ZipFile(path) as z:
            root = os.path.realpath(dest)
            for name in z.namelist():
                if not os.path.realpath(os.path.join(dest, name)).startswith(root + os.sep):
                    raise UnsafeArchiveError(f"the entry '{name}' would be written outside {dest}")
            check_space(dest, sum(i.file_size for i in z.infolist()), f"extracting {os.path.basename(path)}")
            z.extractall(dest)
    else:
        raise ValueError("neither a tar.gz nor a zip archive")


def flatten_single_folder(folder):
    """When ``folder`` holds only one folder (an archive's top folder), move its content up."""
    entries = [e for e in os.listdir(folder) if not e.startswith(".")]
    if len(entries) == 1 and os.path.isdir(os.path.join(folder, entries[0])):
        # Renamed first: the top folder may hold a folder of its own name (Suite/Suite/...).
        inner = os.path.join(folder, ".flatten-" + entries[0])
        os.rename(os.path.join(folder, entries[0]), inner)
        for e in os.listdir(inner):
            shutil.move(os.path.join(inner, e), os.path.join(folder, e))
        os.rmdir(inner)


def published_shortfalls(source, folder):
    """For the suite that ``source`` installs (its ``target`` is one of the suite's folders), the
    generators found in ``folder`` with fewer images than ``data.benchmarks`` says were
    published, each as one line; [] when every published count is met or none is known."""
    suite = next((s for s in SUITES if source.target.lower() in (d.lower() for d in s.dirs)), None)
    out = []
    for gen in suite.generators if suite else ():
        if gen.published is None:
            continue
        path = locate_generator(folder, gen)
        files = class_files(path)[0] if path else {0: [], 1: []}
        real, fake = len(files[0]), len(files[1])
        want = gen.published
        if (real + fake < want) if isinstance(want, int) else (real < want[0] or fake < want[1]):
            out.append(f"{gen.name}: {count_check(gen, real, fake)[1]}")
    return out


def install(source, archives, root, folder):
    """Extract ``archives`` of ``source`` under ``root`` so that ``root/<target>`` is the folder
    the scripts read; a partial extraction is redone from scratch."""
    staging = os.path.join(folder, ".extracting")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    # A split zip (x.z01 ... x.zip) is joined first and extracted as one archive.
    split = {a: split_parts(a) for a in archives if a.endswith(".zip")}
    joined = {join_split_zip(parts, a[:-4] + ".joined.zip"): parts for a, parts in split.items() if parts}
    in_parts = {p for parts in joined.values() for p in parts}
    for a in list(joined) + [a for a in archives if a not in in_parts]:
        try:
            extract(a, staging)
        except UnsafeArchiveError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise failure(source, f"extracting {os.path.basename(a)}",
                          f"unsafe archive: {e}; nothing was installed, the archive is kept at {a} for inspection",
                          folder) from None
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
            # Only an archive that cannot be read is deleted: a full disk or a permission error is not its fault.
            for bad in [a] + joined.get(a, []):
                os.remove(bad)
            shutil.rmtree(staging, ignore_errors=True)
            raise failure(source, f"extracting {os.path.basename(a)}",
                          f"{type(e).__name__}: {e}; the archive is corrupt and was removed, run again to download "
                          "it anew", folder) from None
        except OSError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise failure(source, f"extracting {os.path.basename(a)}",
                          f"{e.strerror or e}; the archive is kept, nothing was installed", folder) from None
    for j in joined:
        os.remove(j)
    flatten_single_folder(staging)
    short = published_shortfalls(source, staging)
    if short:
        shutil.rmtree(staging, ignore_errors=True)
        shown = "; ".join(short[:3]) + ("; ..." if len(short) > 3 else "")
        raise failure(source, "the count of installed images",
                      f"fewer images than published: {shown}; nothing was installed and the archives are kept in "
                      f"{folder} (remove them to download again)", folder)
    target = os.path.join(root, source.target)
    os.makedirs(target, exist_ok=True)
    for e in os.listdir(staging):
        dst = os.path.join(target, e)
        if os.path.exists(dst):
            shutil.rmtree(dst) if os.path.isdir(dst) else os.remove(dst)
        shutil.move(os.path.join(staging, e), dst)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def download(source, root, keep_archives=False, weights_path="NPR.pth", progress=True):
    """Fetch, check and install one source; returns where it is. Skipped when its marker
    (``<root>/.downloads/<name>.done``) says it is complete and its folder is there."""
    if source.kind == "manual":
        raise DownloadError(f"{source.name}: no scripted download: {source.note}. Get it from {source.manual} "
                            f"and put it in {os.path.join(root, source.target)}")
    if not source.target:  # a weights file: NPR.pth at weights_path, the others beside it
        weights_path = inside_if_folder(weights_path, "NPR.pth")
        path = weights_path if source.name == "weights" else \
            os.path.join(os.path.dirname(os.path.abspath(weights_path)), source.archives[0])
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        # one download per file: a second command (another terminal, every node of a job) waits, then finds it
        with waiting_lock(os.path.join(folder, f".{os.path.basename(path)}.lock"), f"downloading {path}"):
            if os.path.isfile(path):
                try:
                    check_weights_file(path)
                    return path
                except ValueError as e:
                    raise DownloadError(f"{source.name}: {path} is there but {e}; remove it and run again") from None
            return fetch(replace(source, archives=(os.path.basename(path),)), folder, progress, check_weights_file)[0]
    folder = os.path.join(root, ".downloads", source.name)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with waiting_lock(folder + ".lock", f"downloading {source.name} into {root}"):
        return fetch_and_install(source, root, folder, keep_archives, progress)


def fetch_and_install(source, root, folder, keep_archives, progress):
    """``download``'s work for a suite, under its lock: skipped when the marker says it is done."""
    marker, target = folder + ".done", os.path.join(root, source.target)
    if os.path.isfile(marker) and os.path.isdir(target):
        return target
    os.makedirs(folder, exist_ok=True)
    archives = fetch(source, folder, progress)
    if not archives:
        raise failure(source, "the download", "no archive came back", folder)
    sizes = {os.path.basename(a): os.path.getsize(a) for a in archives}
    install(source, archives, root, folder)
    write_json_atomically({"source": source.name, "url": source.url, "archives": sizes, "target": source.target},
                          marker)
    if not keep_archives:
        shutil.rmtree(folder, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- command line

def get_args_parser():
    p = OneLineErrorParser("Download the paper's benchmark suites and weights, check them and extract them where "
                           "test.py finds them.")
    p.add_argument("names", nargs="*", help="sources (see --list), 'all' for every scripted one, 'weights' for NPR.pth")
    p.add_argument("--root", default="./datasets", help="where the suites go (test.py --dataroot)")
    p.add_argument("--weights_path", default="NPR.pth",
                   help="where 'weights' writes NPR.pth (a folder: NPR.pth in it; other weights go beside it)")
    p.add_argument("--keep_archives", action="store_true", help="keep the archives after extraction")
    p.add_argument("--list", action="store_true", help="list the sources and exit")
    return p


def list_sources():
    lines = [f"{'name':<20} {'how':<14} {'disk':<44} manual source"]
    for s in SOURCES:
        lines.append(f"{s.name:<20} {s.kind:<14} {s.disk or '-':<44} {s.manual}")
    return "\n".join(lines)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    setup_logging()
    if args.list or not args.names:
        print(list_sources())
        return 0
    names = [s.name for s in SOURCES if s.kind != "manual" and s.target] if args.names == ["all"] \
        else args.names
    sources = []
    for n in names:
        s = source_by_name(n)
        if s is None:
            raise UserError(f"unknown source '{n}'; known: {', '.join(x.name for x in SOURCES)}, or all")
        sources.append(s)
    for s in sources:
        where = download(s, args.root, args.keep_archives, args.weights_path)
        print(f"{s.name}: ready in {where}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
