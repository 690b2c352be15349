"""The downloader (``python -m tools.download`` is its command line), on purpose only: a source of
``data.benchmarks`` is fetched into ``<root>/.downloads/<name>/`` (``data.transfers``; an archive put
there by hand is used as it is), checked, extracted into its suite's folder (``data.archives``),
counted against the published counts, and marked done (``<root>/.downloads/<name>.done``). Only an
archive that cannot be read is ever deleted; a failed step is one line naming the source, the
manual link and where a file downloaded by hand goes (docs/troubleshooting.md)."""
import glob
import http.client
import os
import shutil
import tarfile
import urllib.error
import zipfile
import zlib
from dataclasses import replace

from files import inside_if_folder, no_space, sha256_of, waiting_lock, write_json_atomically
from util import UserError

from .archives import UnsafeArchiveError, extract, flatten_single_folder, join_split_zip, split_parts
from .benchmarks import SOURCES, locate_generator, suite_by_name
from .transfers import ChecksumError, check_weights_file, fetch_url, gdown_fetch
from .verification import class_files, count_check


class DownloadError(UserError):
    """A download, check or extraction that failed; the message names the source and what to do."""


def failure(source, what, reason, folder):
    """The one-line error of a failed step; ``folder`` is where the next run looks for archives put
    there by hand."""
    reason = " ".join(str(reason).split())  # one line, whatever the library said
    manual = f" Download it by hand from {source.manual}" if source.manual else ""
    where = f" and put {', '.join(source.archives)} in {folder}," if source.archives else ","
    return DownloadError(f"{source.name}: {what} failed ({reason}).{manual}{where} then run the command again.")


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


# ----------------------------------------------------------------------------- installing

def published_shortfalls(source, folder):
    """For the suite that ``source`` installs (``Source.suite``), the generators found in ``folder``
    with fewer images than ``data.benchmarks`` says were published, each as one line; [] when
    every published count is met or none is known."""
    suite = suite_by_name(source.suite) if source.suite else None
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
            continue
        except UnsafeArchiveError as e:
            why = f"unsafe archive: {e}; nothing was installed, the archive is kept at {a} for inspection"
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
            # Only an archive that cannot be read is deleted: a full disk or a permission error is not its fault.
            for bad in [a] + joined.get(a, []):
                os.remove(bad)
            why = f"{type(e).__name__}: {e}; the archive is corrupt and was removed, run again to download it anew"
        except OSError as e:
            advice = "; free space or use another --root, then run again" if no_space(e) else ""
            why = f"{e.strerror or e}{advice}; the archive is kept, nothing was installed"
        shutil.rmtree(staging, ignore_errors=True)
        raise failure(source, f"extracting {os.path.basename(a)}", why, folder)
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


def list_sources():
    lines = [f"{'name':<20} {'how':<14} {'disk':<44} manual source"]
    for s in SOURCES:
        lines.append(f"{s.name:<20} {s.kind:<14} {s.disk or '-':<44} {s.manual}")
    return "\n".join(lines)
