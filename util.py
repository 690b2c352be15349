"""Small helpers shared by the scripts: user-facing errors, devices, seeding, logging."""
import contextlib
import ctypes
import datetime
import errno
import functools
import hashlib
import json
import logging
import math
import os
import random
import shutil
import socket
import stat
import sys
import tempfile

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger("npr")

# --amp: float16 autocast on CUDA (with a GradScaler when training). float16, not bfloat16:
# it moves the probabilities less (docs/speed.md).
AMP_DTYPE = torch.float16


class UserError(Exception):
    """A problem the user can fix (bad flag, missing folder, bad checkpoint).

    Scripts print it as one line and exit with status 2 instead of a traceback.
    """


def keep_freed_memory():
    """Let glibc keep large freed blocks in the process instead of handing them back to the kernel.

    By default glibc serves every allocation over 32 MiB with a fresh ``mmap`` and unmaps it
    on free, so each batch's activations are faulted in again page by page: on a CPU, a third
    of evaluation's time was the kernel's (docs/speed.md). Raising glibc's mmap and trim
    thresholds (``mallopt``, the same knobs as the ``MALLOC_MMAP_THRESHOLD_`` /
    ``MALLOC_TRIM_THRESHOLD_`` environment variables) reuses that memory across batches,
    for a higher peak resident set. Every script that runs the model calls it first thing in its
    ``main()``; ``NPR_ALLOCATOR=system``
    in the environment leaves glibc as it is. Returns True when the setting took effect
    (Linux with glibc only; a no-op elsewhere).
    """
    if os.environ.get("NPR_ALLOCATOR", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, say)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def reserve_file(f, nbytes):
    """Give the open file ``f`` the size ``nbytes`` with its disk blocks allocated now (Linux
    ``fallocate``), so that writing it later through a memory map cannot meet a full disk, which
    kills the process with SIGBUS and no word. Returns False where the filesystem cannot
    allocate ahead (the file is then sparse, as ``truncate`` leaves it); a full disk is an
    ``OSError`` (ENOSPC) now."""
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


def fingerprint(names):
    """A short hash of a list of names (file paths, in order): whether two runs saw the same list."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:16]


def sha256_of(path, chunk=1 << 20):
    """SHA-256 (hex) of a file, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def cut_name(name, nbytes):
    """``name`` shortened, at a character boundary, to at most ``nbytes`` bytes on disk: part of
    a file name that must stay within the 255 bytes a file system allows."""
    while len(os.fsencode(name)) > nbytes:
        name = name[:-1]
    return name


def inside_if_folder(path, name):
    """``path``, or ``path/name`` when ``path`` names a folder (ends with a separator, or is one):
    an output given as a folder gets its file inside it."""
    return os.path.join(path, name) if path.endswith(("/", os.sep)) or os.path.isdir(path) else path


def temp_prefix(name):
    """The prefix of a temporary file written beside ``name``: hidden, and short enough that the
    name with its random part stays within the 255 bytes a file system allows for any ``name``
    that fits itself."""
    return "." + cut_name(name, 200) + "."


@contextlib.contextmanager
def atomic_file(path, mode="w", **open_kwargs):
    """Write ``path`` through a file object that is a new temporary file beside it (a unique
    name: two writers never share one), renamed over ``path`` when the block ends without an
    error and removed when it does not. A reader never sees half a file, an interrupted write
    leaves the previous file as it was, and a link at ``path`` is replaced, never followed."""
    folder, name = os.path.split(os.path.abspath(path))
    if "b" not in mode:  # UTF-8 text; a path from a folder name that is not UTF-8 keeps its bytes
        open_kwargs = {"encoding": "utf-8", "errors": "surrogateescape", **open_kwargs}
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(name), suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def staged_folder(folder):
    """A new hidden folder inside ``folder`` to write a set of files into: when the block ends
    without an error they replace their namesakes in ``folder`` (renames, which need no space),
    and whatever happens the staging folder is removed. A disk that fills while they are written
    leaves every earlier file in ``folder`` as it was."""
    os.makedirs(folder, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".staging-", dir=folder)
    try:
        yield stage
        for name in sorted(os.listdir(stage)):
            os.replace(os.path.join(stage, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class RunLock:
    """The exclusive right of one process to a set of files: a POSIX record lock
    (``fcntl.lockf``) on ``path``, which the kernel releases when the holder ends, however it
    ends, so a lock is never stale. The file stays (it names the last holder: pid, host, start,
    command); it holds no lock by itself. A second process is refused with one line that names
    the holder, ``what`` it is doing and the ``option`` that picks other files."""

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
        try:
            # Never through a link, never blocking on a FIFO: the file is truncated below.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(f"cannot write {self.path} (a link); remove it or choose another {self.option}") from None
            raise UserError(f"cannot write {self.path} ({e.strerror or e}); choose another {self.option}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UserError(f"cannot write {self.path} (not a regular file); remove it or choose another "
                            f"{self.option}")
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            h = self.holder()
            who = f"pid {h.get('pid', '?')} on {h.get('host', '?')}, since {h.get('since', '?')}" if h else \
                "another process"
            raise UserError(f"{self.path} is held by {who}: {self.what}; wait for it to end, or choose another "
                            f"{self.option}") from None
        with contextlib.suppress(OSError):  # who holds it, for the message of a second process; a full disk keeps none
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
    """Hold the kernel's exclusive lock on the file ``path`` for the block, waiting (with one log
    line naming ``what`` the holder does) while another process holds it. Released when the
    block ends or the process dies, however it dies: never stale. No lock where the platform
    has no ``fcntl``."""
    if fcntl is None:
        yield
        return
    try:  # never through a link, never blocking on a FIFO planted at the path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as e:
        raise UserError(f"cannot open the lock file {path} ({e.strerror or e}); remove what is in the way") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"the lock file {path} is not a regular file; remove what is in the way")
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("Another process is %s: waiting for it", what)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def no_space(err):
    """Whether the ``OSError`` ``err`` says the disk (or the user's quota, or the file size limit) is
    full: freeing space, not another path, is what helps."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def write_json_atomically(obj, path):
    """``json.dump`` through ``atomic_file``: a reader never sees half a file. NaN and infinities
    (an AP without fake images) are written as null: the file is strict JSON, which every
    parser reads."""
    with atomic_file(path) as f:
        json.dump(finite_or_null(obj), f, indent=1, allow_nan=False)


def finite_or_null(obj):
    """``obj`` with every NaN or infinite float (nested in dicts, lists and tuples) made None."""
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the script kept and how to go on; ``run_cli`` prints it as one line."""


def run_cli(main, argv=None):
    """Run ``main(argv)`` as a script. A ``UserError`` is one readable line and exit code 2;
    Ctrl-C is one line (``Interrupted`` says what was kept) and 130; a reader that stops reading
    (``predict.py ... | head``) ends the script quietly with 141, as it ends ``cat``; a character
    the terminal cannot encode (a photo's name in an ASCII console) is printed escaped."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):  # not a text stream (a test's capture)
            stream.reconfigure(errors="backslashreplace")
    try:
        code = main(argv)
        sys.stdout.flush()  # a closed pipe shows here, not as a warning at exit
    except UserError as e:
        print(f"error: {terminal_safe(one_line(e))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(terminal_safe(f"interrupted{': ' + str(e) if str(e) else ''}"), file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more reaches the closed pipe
        sys.exit(141)
    sys.exit(code or 0)


def one_line(err):
    """The user-facing line of an error; a DataLoader worker re-raises it wrapped in a traceback."""
    text = str(err).strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
    return text


def select_device(gpu_ids="0"):
    """CUDA (the first id of ``--gpu_ids``) when available, else the CPU; ``-1`` forces the CPU."""
    try:
        ids = [int(i) for i in str(gpu_ids).split(",") if i.strip() != ""] if gpu_ids is not None else []
    except ValueError:
        raise UserError(f"gpu_ids {gpu_ids!r}: CUDA device ids, e.g. 0 or 0,1; -1 for the CPU") from None
    if not ids or ids[0] < 0 or not torch.cuda.is_available():
        return torch.device("cpu")
    if ids[0] >= torch.cuda.device_count():
        raise UserError(f"--gpu_ids {gpu_ids}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                        "use --gpu_ids -1 for the CPU")
    return torch.device("cuda", ids[0])


def launch_env(rendezvous=False):
    """``(rank, world_size, local_rank)`` from the variables that ``torchrun`` (or a scheduler's
    launch script) sets, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``;
    ``(0, 1, 0)`` where none is set. With ``rendezvous`` (a process group is made from them:
    train.py), a launch also needs ``MASTER_ADDR`` and a ``MASTER_PORT``. Every value that cannot
    describe one process of a run is named, in one ``UserError``."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    given = {k: os.environ[k] for k in names if k in os.environ}
    problems = []

    def whole(name, default, low, high=None):
        if name not in given:
            return default
        try:
            n = int(given[name])
        except ValueError:
            problems.append(f"{name} is not a whole number")
            return None
        if n < low or (high is not None and n > high):
            problems.append(f"{name} is not in {low}..{high if high is not None else ''}")
            return None
        return n
    rank, world, local = whole("RANK", 0, 0), whole("WORLD_SIZE", 1, 1), whole("LOCAL_RANK", 0, 0)
    local_world = whole("LOCAL_WORLD_SIZE", None, 1)
    if rank is not None and world is not None and rank >= world:
        problems.append("RANK must be below WORLD_SIZE")
    if local is not None and local_world is not None and local >= local_world:
        problems.append("LOCAL_RANK must be below LOCAL_WORLD_SIZE")
    if rendezvous and ({"RANK", "WORLD_SIZE"} & set(given)):
        problems += [f"{k} is not set" for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
                     if not given.get(k, "").strip()]
        if given.get("MASTER_PORT", "").strip():
            whole("MASTER_PORT", None, 1, 65535)
    if problems:
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise UserError(f"the environment's {shown} cannot describe one process of a run ({'; '.join(problems)}): "
                        "use the values torchrun sets, or unset them to run a single process")
    return rank, world, local


def usable_device(device):
    """``torch.device(device)``, once a tensor can be made there: a device this machine does not
    have ('cuda' without a GPU) is one ``UserError``, not an error from inside the first model
    move."""
    try:
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError, ValueError) as e:
        why = one_line(e).split(". ")[0]
        raise UserError(f"device {str(device)!r} cannot be used here ({why}); use 'cpu', or None for CUDA when "
                        "available") from None
    return device


def set_numerics(tf32=False, exact=False, deterministic=False):
    """Float32 numerics on CUDA: TF32 off unless asked; ``exact`` also does what the reference's
    ``seed_torch`` does (cuDNN disabled, deterministic algorithms).

    PyTorch lets cuDNN convolutions use TF32 by default, which on Ampere / Hopper GPUs rounds
    their inputs to 10 mantissa bits; the reference ran with cuDNN disabled, i.e. in full float32.
    ``deterministic`` only asks for deterministic algorithms. On the CPU TF32 and cuDNN change
    nothing.
    """
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        precision = "tf32" if tf32 else "ieee"  # PyTorch >= 2.9
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if exact:
        torch.backends.cudnn.enabled = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    if exact or deterministic:
        # cuBLAS needs a fixed workspace to be deterministic (PyTorch's reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# C0 and C1 control characters and DEL: a file name may carry a terminal's escape sequences.
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}


@functools.cache
def _control_table(keep):
    return {c: e for c, e in _CONTROL.items() if chr(c) not in keep}


def terminal_safe(text, keep="\n\t"):
    """``text`` with control characters shown as escapes (``\\x1b``), so that a file name holding
    escape sequences is printed, not obeyed by the terminal; the characters in ``keep`` stay."""
    return text.translate(_control_table(keep))


def printable(name):
    """A file name as text can show it (a terminal, a table, a CSV): bytes that are not UTF-8
    (kept by Python as surrogates) become U+FFFD instead of raising, and control characters (a
    newline, a terminal's escape sequence) are shown escaped, on the name's one line."""
    return terminal_safe(name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), keep="")


class TerminalSafeFormatter(logging.Formatter):
    def format(self, record):
        return terminal_safe(super().format(record))


def setup_logging(log_file=None, rank=0):
    """Log to stdout (rank 0 only) and, when given, to ``log_file``."""
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    if rank != 0:
        log.addHandler(logging.NullHandler())
        return log
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(TerminalSafeFormatter("%(message)s"))
    log.addHandler(out)
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8", errors="backslashreplace")
        fh.setFormatter(TerminalSafeFormatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(fh)
    return log


def ensure_writable_file(path, what):
    """Check, before long work, that a file can be written at ``path``: its folder is made and
    writable, and no folder sits at the path itself."""
    if os.path.isdir(path):
        raise UserError(f"{what} '{path}' is a folder; give a file name")
    ensure_writable_dir(os.path.dirname(os.path.abspath(path)), f"the folder of {what}")
    return path


def ensure_writable_dir(path, what):
    """Create ``path`` if needed and check that files can be written there, before any long work."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UserError(f"{what} '{path}' is a file, not a folder; choose another folder")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test_{os.getpid()}")
        try:
            with open(probe, "wb") as f:
                f.write(b"ok")
        finally:  # a full disk lets the file be made and refuses its byte
            with contextlib.suppress(OSError):
                os.remove(probe)
    except OSError as e:
        advice = "free some space or choose another folder" if no_space(e) else "choose another folder"
        raise UserError(f"{what} '{path}' is not writable ({e.strerror or e}); {advice}") from None
    return path
