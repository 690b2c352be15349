"""predict.py's result files: written as the scan goes, resumed after a crash, locked against a
second run, and merged from shards.

* ``<out>.jsonl`` and ``<out>.csv``: one row per image, in input order, appended and flushed
  as each batch finishes (file names that are not UTF-8 keep their bytes: JSON escapes them,
  the CSV holds them as they are);
* ``<out>.json``: the run's settings while it runs (``"complete": false``); once complete,
  also the counts and every prediction;
* ``<out>.lock``: held (``OutputLock``) by the one process writing ``<out>.*``.

A rerun keeps the *valid prefix* of ``<out>.jsonl``: rows that are whole lines, in input
order, that pass ``row_problem``; the first row that does not ends it. Everything after it is
scored again, so whatever happened to the files (cut, edited, deleted), a rerun ends with one
row per input, and a kept row is never changed.
"""
import csv
import json
import os

from data.images import SKIP_REASONS
from files import (atomic_file, check_output, file_kind, fingerprint, no_space, RunLock, sha256_of, write_csv_atomically,
                   write_json_atomically)
from util import log, UserError

PREDICTION_FIELDS = ["path", "prob_fake", "verdict", "truncated"]


def failed_path(e, default):
    """The path an ``OSError`` is about (a rename's target rather than its temporary source)."""
    return getattr(e, "filename2", None) or getattr(e, "filename", None) or default


def row_problem(row, path, threshold):
    """None when ``row`` is a prediction row for ``path`` at ``threshold``, as predict.py writes
    it; else what is wrong with it."""
    if not isinstance(row, dict) or set(row) != set(PREDICTION_FIELDS):
        return f"not a row of the fields {', '.join(PREDICTION_FIELDS)}"
    if row["path"] != path:
        return f"the path {row['path']!r} where {path!r} comes next"
    prob, verdict = row["prob_fake"], row["verdict"]
    if not isinstance(row["truncated"], bool):
        return f"truncated is {row['truncated']!r}, not true or false"
    if prob is None:
        return None if verdict in SKIP_REASONS else f"no P(fake) but the verdict {verdict!r}"
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not (0.0 <= prob <= 1.0):
        return f"P(fake) is {prob!r}, not a probability"
    expected = "fake" if prob > threshold else "real"
    return None if verdict == expected else f"the verdict {verdict!r} where P(fake) {prob} gives {expected!r}"


# ----------------------------------------------------------------------------- the lock

class OutputLock(RunLock):
    """The exclusive right to write ``<out>.*``: a ``files.RunLock`` on ``<out>.lock``. Network
    filesystems lock this way when their locks reach the server (NFSv4; NFSv3 with lockd, not
    mounted ``nolock``): docs/scaling.md."""

    def __init__(self, out):
        super().__init__(out + ".lock", "another predict.py is writing these files", "--output")


RESULT_SUFFIXES = (".jsonl", ".csv", ".json", ".lock")


def claim_output(out, merged=None):
    """Make sure ``<out>.*`` (and a shard's ``<merged>.*``) can be written (``files.check_output``)
    and take ``<out>``'s lock: done before the model loads, so a wrong ``--output`` is one line at
    once."""
    for o in (out,) if merged is None else (out, merged):
        check_output(o, "--output", suffixes=RESULT_SUFFIXES)
    return OutputLock(out).acquire()


# ----------------------------------------------------------------------------- the files

class PredictionFiles:
    """The result files of one run (one shard, or the whole input list); see the module's doc.

    ``settings`` (with the fingerprint of every input added) identify the run: files of a run
    with other settings are replaced (and the log says so), as are any with ``overwrite``. The
    model is one of them, known by its checkpoint's SHA-256: the same file spelled two ways is one
    model, and a checkpoint saved over the same path is another. A result file that is not itself
    a regular file (a link, a FIFO a read would block on, a folder) is never read, only replaced.
    """

    def __init__(self, out, settings, paths, all_paths=None, shard=None):
        self.out, self.paths = out, paths
        everything = paths if all_paths is None else all_paths
        self.settings = dict(settings, inputs=fingerprint(everything), n_inputs=len(everything),
                             shard=None if shard is None else "{}/{}".format(*shard))
        self.threshold = settings["threshold"]
        self.jsonl, self.csv, self.json = out + ".jsonl", out + ".csv", out + ".json"
        self.counts, self.files = {}, ()

    def meta(self):
        """The ``<out>.json`` of a run (a dict with its settings), or None."""
        if file_kind(self.json, follow=False) != "file":
            return None
        try:
            with open(self.json, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) and isinstance(meta.get("settings"), dict) else None

    def is_complete(self):
        meta = self.meta()
        return bool(meta and meta.get("complete") is True and meta["settings"] == self.settings)

    def open(self, overwrite=False):
        """Prepare the files; returns how many images (a prefix of ``paths``) are already done."""
        meta = None if overwrite else self.meta()
        if meta is not None and meta["settings"] != self.settings:
            old = meta["settings"]
            diff = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
            log.info("%s holds predictions of another run (different %s): replacing them", self.json, ", ".join(diff))
            meta = None
        if meta is not None and file_kind(self.jsonl, follow=False) not in ("file", "nothing"):
            log.warning("%s is not a regular file: it is replaced and every input is scored again", self.jsonl)
            meta = None
        try:
            done = self.keep_valid_prefix() if meta is not None else self.start_afresh()
            self.attach()
        except OSError as e:
            advice = "free some space and run the same command again" if no_space(e) else \
                "remove what is in the way or choose another --output"
            raise UserError(f"cannot write the results {self.out}.* ({e.strerror or e}: "
                            f"{failed_path(e, self.out)}); {advice}") from None
        return done

    def start_afresh(self):
        with atomic_file(self.jsonl):
            pass
        self.rewrite_csv()
        write_json_atomically({"settings": self.settings, "complete": False}, self.json)
        return 0

    def attach(self):
        """Open both files for appending (the JSON lines also for reading: ``reattach``)."""
        self.files = (open(self.jsonl, "a+", encoding="utf-8"),
                      open(self.csv, "a", newline="", encoding="utf-8", errors="surrogateescape"))
        self.writer = csv.DictWriter(self.files[1], fieldnames=PREDICTION_FIELDS, extrasaction="ignore")
        self.inode = os.fstat(self.files[0].fileno()).st_ino

    def valid_prefix(self, jsonl=None):
        """(rows, bytes) of the valid prefix of ``jsonl`` (default ``<out>.jsonl``; absent: empty),
        and the reason the first other row was refused (None if every row is valid)."""
        done, keep, jsonl = 0, 0, jsonl or self.jsonl
        if file_kind(jsonl, follow=False) not in ("file", "nothing"):
            return 0, 0, "it is not a regular file"
        try:
            f = open(jsonl, "rb")
        except FileNotFoundError:
            return 0, 0, None
        with f:
            for line in f:
                if not line.endswith(b"\n"):
                    return done, keep, f"row {done + 1} is cut short"
                if done == len(self.paths):
                    return done, keep, f"row {done + 1} is one more than the {len(self.paths)} inputs"
                try:
                    problem = row_problem(json.loads(line), self.paths[done], self.threshold)
                except ValueError as e:
                    problem = f"not JSON ({e})"
                if problem:
                    return done, keep, f"row {done + 1}: {problem}"
                done, keep = done + 1, keep + len(line)
        return done, keep, None

    def keep_valid_prefix(self):
        """Cut ``<out>.jsonl`` to its valid prefix and rebuild the CSV and the counts from it."""
        done, keep, problem = self.valid_prefix()
        if problem:
            log.warning("%s: %s; the %d rows before it are kept and the rest is scored again", self.jsonl, problem,
                        done)
        with open(self.jsonl, "ab") as f:
            f.truncate(keep)
        self.rewrite_csv()
        for row in self.rows():
            self.count(row)
        write_json_atomically({"settings": self.settings, "complete": False}, self.json)
        return done

    def rows(self):
        """The rows written so far, read back one at a time."""
        with open(self.jsonl, encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)

    def rewrite_csv(self):
        write_csv_atomically(self.rows() if os.path.exists(self.jsonl) else [], self.csv, PREDICTION_FIELDS)

    def count(self, row):
        self.counts[row["verdict"]] = self.counts.get(row["verdict"], 0) + 1
        self.counts["truncated"] = self.counts.get("truncated", 0) + bool(row["truncated"])

    def reattach(self):
        """The files were removed or replaced while the scan ran (a cleaner emptied the folder):
        write them again from the rows this process holds open, and go on appending there."""
        log.warning("%s was removed or replaced while the scan ran: writing it again from the %d rows scored so "
                    "far", self.jsonl, sum(v for k, v in self.counts.items() if k != "truncated"))
        old = self.files[0]
        old.flush()
        old.seek(0)
        os.makedirs(os.path.dirname(os.path.abspath(self.out)), exist_ok=True)
        with atomic_file(self.jsonl) as f:
            for line in old:
                f.write(line)
        self.close()
        self.rewrite_csv()
        write_json_atomically({"settings": self.settings, "complete": False}, self.json)
        self.attach()

    def moved(self):
        try:
            return os.stat(self.jsonl).st_ino != self.inode
        except FileNotFoundError:
            return True

    def write(self, rows):
        """Append ``rows`` to both files and flush them."""
        if self.moved():
            self.reattach()
        for row in rows:
            row = {k: row[k] for k in PREDICTION_FIELDS}
            self.files[0].write(json.dumps(row) + "\n")
            self.writer.writerow(row)
            self.count(row)
        for f in self.files:
            f.flush()

    def close(self):
        """Close the files. Every row was flushed as it was written, so a close that cannot flush
        follows a write that failed already (and said so): its error is not raised again."""
        for f in self.files:
            try:
                f.close()
            except OSError:
                pass
        self.files = ()

    def finish(self, info):
        """Mark the run complete: ``<out>.json`` gets ``info``, the counts, every prediction
        (streamed from ``<out>.jsonl``) and the SHA-256 of the rows, by which a merge knows
        whether it merged these very rows."""
        if self.files and self.moved():
            self.reattach()
        self.close()
        head = {"settings": self.settings, **info, "complete": True, "rows_sha256": sha256_of(self.jsonl),
                "counts": self.counts}
        with atomic_file(self.json) as f:
            f.write("{\n" + "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in head.items()))
            f.write(' "predictions": [')
            for i, row in enumerate(self.rows()):
                f.write(("," if i else "") + "\n  " + json.dumps(row))
            f.write("\n ]\n}\n")


# ----------------------------------------------------------------------------- shards

def shard_paths(paths, k, n):
    """The k-th of n contiguous, deterministic parts of ``paths`` (k from 1)."""
    return paths[(k - 1) * len(paths) // n: k * len(paths) // n]


def shard_name(output, k, n):
    return f"{output}.shard{k}of{n}"


def shard_state(part):
    """'complete', or what keeps the shard ``part`` (its ``PredictionFiles``) from being merged."""
    meta = part.meta()
    if meta is None:
        return "not started (or its .json is unreadable)"
    if meta["settings"] != part.settings:
        old = meta["settings"]
        diff = sorted(k for k in set(old) | set(part.settings) if k != "shard" and old.get(k) != part.settings.get(k))
        if "model" in diff:
            return "scored by another model (the checkpoint's contents differ): run its command again"
        return f"run with other settings ({', '.join(diff)})"
    if meta.get("complete") is not True:
        return "still running, or stopped before the end"
    done, _, problem = part.valid_prefix()
    if problem or done != len(part.paths):
        return f"damaged after it finished ({problem or f'{done} of {len(part.paths)} rows'})"
    return "complete"


def merge_shards(output, settings, paths, info, n):
    """Write the merged ``<output>.*`` when every one of the n shards is complete.

    Returns (whether the merged files are complete now, a line on the state of the merge). The
    merge holds ``<output>``'s lock; a merge killed half way leaves ``<output>.json``
    incomplete, and running any shard's command again (it finds its own rows done) merges."""
    parts = [PredictionFiles(shard_name(output, k, n), settings, shard_paths(paths, k, n), paths, (k, n))
             for k in range(1, n + 1)]
    states = [shard_state(p) for p in parts]
    waiting = [f"shard {k}: {s}" for k, s in enumerate(states, 1) if s != "complete"]
    if waiting:
        return False, "not merged yet: " + "; ".join(waiting) + ". The last shard to finish merges them " \
            f"into {output}.*; a shard run again with the same options resumes, then merges"
    merged = PredictionFiles(output, settings, paths)
    finished = [p.meta().get("rows_sha256") for p in parts]
    if merged.is_complete() and merged.meta().get("merged_from") == finished:
        return True, f"the {n} shards are merged in {output}.*"
    try:
        lock = OutputLock(output).acquire()
    except UserError as e:
        return False, f"not merged by this shard: {e}. If that process ends without merging, run any shard's " \
            "command again"
    try:
        write_json_atomically({"settings": merged.settings, "complete": False}, merged.json)
        with atomic_file(merged.jsonl, "wb") as dst:
            for part in parts:
                with open(part.jsonl, "rb") as src:
                    while block := src.read(1 << 20):
                        dst.write(block)
        merged.rewrite_csv()
        for row in merged.rows():
            merged.count(row)
        merged.finish({**info, "merged_from": finished})
    except OSError as e:
        return False, f"not merged: cannot write {output}.* ({e.strerror or e}: " \
            f"{failed_path(e, output)}); remove what is in the " \
            "way and run any shard's command again"
    finally:
        lock.release()
    return True, f"merged the {n} shards into {output}.csv / .jsonl / .json"
