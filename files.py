"""Guards for the files the project writes: one answer each to "can this output be written?",
"what is at this path?", "is there room?", "does this name fit?", and the writes and locks
that never leave half a file or two writers behind. Imports nothing heavier than the standard
library, so the tools that only touch files do not pay for torch."""
import contextlib
import csv
import ctypes
import datetime
import errno
import hashlib
import json
import math
import os
import shutil
import socket
import stat
import sys
import tempfile

from util import UserError, log

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

# Bytes in one file name on ext4, XFS, Btrfs, tmpfs, NFS, APFS and NTFS. A name the project
# derives (a temporary file, a figure) is cut to fit; a name the user gives is refused.
NAME_MAX = 255


# ----------------------------------------------------------------------------- names and paths

def cut_name(name, room=NAME_MAX):
    """``name`` shortened at a character boundary to at most ``room`` bytes on disk."""
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return name


def inside_if_folder(path, name):
    """``path``, or ``path/name`` when ``path`` names a folder (ends with a separator, or is one):
    an output given as a folder gets its file inside it."""
    return os.path.join(path, name) if path.endswith(("/", os.sep)) or os.path.isdir(path) else path


def file_kind(path, follow=True):
    """'file' for a regular file; else what is there: a folder, a FIFO, a device, a socket, a
    broken link, nothing, or (with ``follow=False``, which looks at ``path`` itself) a link. Reads
    no content, so a FIFO cannot block and /dev/zero is never read."""
    try:
        mode = (os.stat if follow else os.lstat)(path).st_mode
    except FileNotFoundError:
        return "a broken link" if os.path.islink(path) else "nothing"
    except OSError as e:
        return f"not readable: {e.strerror or e}"
    for test, what in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a link"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what + (" behind a link" if follow and what != "file" and os.path.islink(path) else "")
    return "not a regular file"


# ----------------------------------------------------------------------------- room

def no_space(err):
    """Whether the ``OSError`` ``err`` says the disk (or the user's quota, or the file size limit) is
    full: freeing space, not another path, is what helps."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def need_space(folder, nbytes, what):
    """Raise ``OSError`` (ENOSPC, naming ``what``) when ``folder``'s disk has less than ``nbytes`` free."""
    free = shutil.disk_usage(folder).free
    if nbytes > free:
        raise OSError(errno.ENOSPC, f"{what} needs {nbytes / 1e9:.2f} GB free in {folder}, only {free / 1e9:.2f} GB are")


def reserve_file(f, nbytes):
    """Give the open file ``f`` the size ``nbytes`` with its blocks allocated now (``fallocate``):
    a memory map written later cannot meet a full disk (SIGBUS, no word). False where the file
    system cannot allocate ahead (the file is then sparse); a full disk is ``OSError`` now."""
    fallocate = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            fallocate = ctypes.CDLL(None, use_errno=True).fallocate
            fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if fallocate is not None and nbytes > 0:
        if fallocate(f.fileno(), 0, 0, nbytes) == 0:
            return True
        if ctypes.get_errno() == errno.ENOSPC:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    f.truncate(nbytes)
    return False


def check_output(path, what, folder=False, suffixes=("",)):
    """Before long work: a file (``folder``: a folder) can be written at ``path`` (plus each of
    ``suffixes``): the folder is made and probed by a write, nothing of the other kind is in the
    way, every name fits ``NAME_MAX``. ``path``, or one ``UserError`` naming ``what`` (the option)."""
    names = [] if folder else [path + s for s in suffixes]
    for name in names:
        base = os.path.basename(name)
        if len(os.fsencode(base)) > NAME_MAX:
            raise UserError(f"{what} {path}: the name {base} is over the {NAME_MAX} bytes a file name may have; "
                            "choose a shorter one")
        if file_kind(name, follow=False) == "a folder":
            raise UserError(f"{what} {path}: {name} is a folder; remove it or choose another {what}")
    where = path if folder else os.path.dirname(os.path.abspath(path))
    if os.path.lexists(where) and not os.path.isdir(where):
        raise UserError(f"{what} {path}: {where} is a file, not a folder; choose another {what}")
    probe = os.path.join(where, f".write_test_{os.getpid()}")
    try:
        os.makedirs(where, exist_ok=True)
        try:
            with open(probe, "wb") as f:
                f.write(b"ok")
        finally:  # a full disk lets the file be made and refuses its byte
            with contextlib.suppress(OSError):
                os.remove(probe)
    except OSError as e:
        advice = "free some space and run the same command again, or choose another" if no_space(e) else "choose another"
        raise UserError(f"{what} {path}: {where} is not writable ({e.strerror or e}); {advice} {what}") from None
    return path


# ----------------------------------------------------------------------------- writing

@contextlib.contextmanager
def writing(what, option, kept=""):
    """The block writes ``what``: an ``OSError`` there (a full disk, a quota, a permission) is one
    ``UserError`` saying why, what is ``kept``, and what to do (``option`` picks another place)."""
    try:
        yield
    except OSError as e:
        advice = "free some space, or choose another" if no_space(e) else "choose another"
        raise UserError(f"cannot write {what} ({e.strerror or e}){kept}: {advice} {option}, and run again") from None


@contextlib.contextmanager
def atomic_file(path, mode="w", fsync=False, **open_kwargs):
    """Write ``path`` through a new temporary file beside it (one per writer), renamed over ``path``
    when the block ends without an error (after ``fsync`` if asked) and removed otherwise: no
    reader sees half a file, and a link at ``path`` is replaced, never followed. Text is UTF-8,
    keeping the bytes of names that are not."""
    folder, name = os.path.split(os.path.abspath(path))
    if "b" not in mode:
        open_kwargs = {"encoding": "utf-8", "errors": "surrogateescape", **open_kwargs}
    # the temporary name ("." + name + "." + 8 random characters + ".tmp") within NAME_MAX
    fd, tmp = tempfile.mkstemp(prefix="." + cut_name(name, NAME_MAX - 14) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # as open() would have made it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_json_atomically(obj, path):
    """``json.dump`` through ``atomic_file``. NaN and infinities (an AP without fake images) are
    written as null: the file is strict JSON, which every parser reads."""
    with atomic_file(path) as f:
        json.dump(finite_or_null(obj), f, indent=1, allow_nan=False)


def write_csv_atomically(rows, path, fields):
    """The dicts ``rows`` as a CSV of the columns ``fields`` (other keys left out), through ``atomic_file``."""
    with atomic_file(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def finite_or_null(obj):
    """``obj`` with every NaN or infinite float (nested in dicts, lists and tuples) made None."""
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@contextlib.contextmanager
def staged_folder(folder):
    """A new hidden folder inside ``folder`` for a set of files, which replace their namesakes there
    (renames: no space needed) when the block ends without an error; it is removed in any case,
    so a disk that fills meanwhile leaves ``folder`` as it was."""
    os.makedirs(folder, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".staging-", dir=folder)
    try:
        yield stage
        for name in sorted(os.listdir(stage)):
            os.replace(os.path.join(stage, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------------- locks

def open_lock(path, advice):
    """The open file descriptor of the lock file ``path``: never through a link, never blocking on
    a FIFO planted there, and a regular file; one ``UserError`` ending with ``advice`` otherwise."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        why = "a link" if e.errno == errno.ELOOP else e.strerror or e
        raise UserError(f"cannot use the lock file {path} ({why}); {advice}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"cannot use the lock file {path} (not a regular file); {advice}")
    return fd


class RunLock:
    """One process's right to a set of files: a POSIX lock (``fcntl.lockf``) on ``path``, which the
    kernel releases however the holder ends (never stale); the file names the last holder. A
    second process gets one line naming the holder, ``what`` it does and the ``option`` to change."""

    def __init__(self, path, what, option):
        self.path, self.what, self.option = path, what, option
        self.fd = None

    def holder(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def acquire(self):
        """Take the lock, or raise ``UserError`` naming the process that holds it."""
        if fcntl is None:
            return self
        fd = open_lock(self.path, f"remove it or choose another {self.option}")
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            h = self.holder()
            who = f"pid {h.get('pid', '?')} on {h.get('host', '?')}, since {h.get('since', '?')}" if h else \
                "another process"
            raise UserError(f"{self.path} is held by {who}: {self.what}; wait for it to end, or choose another "
                            f"{self.option}") from None
        with contextlib.suppress(OSError):  # who holds it, for a second process's message; a full disk keeps none
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": datetime.datetime.now().isoformat(timespec="seconds"),
                                     "command": " ".join(sys.argv)}).encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def waiting_lock(path, what):
    """``RunLock``'s lock on ``path`` for the block, waiting (one log line naming ``what`` the holder
    does) while another process holds it."""
    if fcntl is None:
        yield
        return
    fd = open_lock(path, "remove what is in the way")
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("Another process is %s: waiting for it", what)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ----------------------------------------------------------------------------- content

def sha256_of(path, chunk=1 << 20):
    """SHA-256 (hex) of a file, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(names):
    """A short hash of a list of names (file paths, in order): whether two runs saw the same list."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]
