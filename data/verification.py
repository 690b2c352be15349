"""Check a benchmark copy before trusting its numbers: counts, broken files, duplicates, and
the format bias that lets a detector score by file format instead of generation traces.

    python -m tools.verify --dataroot ./datasets [--suites ForenSynths,GenImage] [--json report.json]
    python test.py --dataroot ./datasets --check_data          # the same, before evaluating

Per suite and generator it reports:

* real and fake counts against the counts the benchmark publishes (``published`` and
  ``counts_from`` in ``data/benchmarks.py``), generators that are missing and folders that are extra;
* unreadable and truncated files, and exact duplicates (same bytes) within a generator and
  across the train / val / test splits of the folder;
* per class: file formats, image sizes and, for JPEG, the quality estimated from the
  quantisation tables; a warning where real and fake differ in format, size or JPEG quality
  (format bias), naming the numbers;
* a one-line verdict per generator, and a JSON report.
"""
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from files import sha256_of

from .benchmarks import find_suites, locate_generator
from .discovery import LABEL_FOLDERS, FolderScan, discover_leaves, list_images, scan_images
from .images import ImageDecodeError, load_rgb

# The IJG (libjpeg) luminance quantisation table at quality 50, in natural order.
IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                     14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                     92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)

# Format-bias thresholds: how far real and fake may differ before a warning.
FORMAT_SHARE_GAP = 0.5    # share of the most common format of one class, against the other class
SIZE_SHARE_GAP = 0.5      # share of the most common size of one class, against the other class
JPEG_QUALITY_GAP = 10     # mean estimated JPEG quality


def jpeg_quality(quantization):
    """The IJG quality (1-100) that best explains a JPEG's luminance table, or None."""
    if not quantization or 0 not in quantization:
        return None
    table = np.asarray(list(quantization[0]), dtype=np.float64)
    if table.size != 64:
        return None
    scale = 100.0 * table.sum() / IJG_LUMA.sum()  # libjpeg: table = (base * scale + 50) / 100
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return int(round(min(100.0, max(1.0, quality))))


def inspect_file(path):
    """Everything the verifier needs from one file, read once: content hash, format, size,
    JPEG quality, and whether it decodes (fully, truncated, or not at all)."""
    out = {"path": path, "sha256": None, "format": None, "size": None, "quality": None, "status": "ok", "error": None}
    try:
        out["sha256"] = file_hash(path)
        with Image.open(path) as img:
            out["format"], out["size"] = img.format, img.size
            if img.format == "JPEG":
                out["quality"] = jpeg_quality(getattr(img, "quantization", None))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        out.update(status="unreadable", error=f"{type(e).__name__}: {e}")
        return out
    try:
        if load_rgb(path).info.get("truncated"):
            out["status"] = "truncated"
    except ImageDecodeError as e:
        out.update(status="unreadable", error=str(e))
    return out


@dataclass
class ClassStats:
    """What one class (real or fake) of one generator holds."""
    n: int = 0
    formats: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    qualities: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)
    truncated: list = field(default_factory=list)

    def add(self, info):
        self.n += 1
        if info["status"] == "unreadable":
            self.unreadable.append(info["path"])
            return
        if info["status"] == "truncated":
            self.truncated.append(info["path"])
        self.formats[info["format"]] += 1
        self.sizes[info["size"]] += 1
        if info["quality"] is not None:
            self.qualities.append(info["quality"])

    def summary(self):
        top_size, top_n = self.sizes.most_common(1)[0] if self.sizes else (None, 0)
        readable = sum(self.formats.values())
        return {"n": self.n, "formats": dict(self.formats.most_common()),
                "top_size": list(top_size) if top_size else None, "top_size_share": top_n / readable if readable else 0,
                "distinct_sizes": len(self.sizes),
                "jpeg_quality_mean": float(np.mean(self.qualities)) if self.qualities else None,
                "unreadable": len(self.unreadable), "truncated": len(self.truncated)}


def share(counter, key):
    total = sum(counter.values())
    return counter.get(key, 0) / total if total else 0.0


def format_bias(real, fake):
    """Warnings where the real and fake classes differ in format, size or JPEG quality."""
    warnings = []
    for name, attr, gap in (("format", "formats", FORMAT_SHARE_GAP), ("size", "sizes", SIZE_SHARE_GAP)):
        a, b = getattr(real, attr), getattr(fake, attr)
        if not a or not b:
            continue
        for own, other in ((a, b), (b, a)):
            top = own.most_common(1)[0][0]
            if share(own, top) - share(other, top) > gap:
                label = top if name == "format" else f"{top[0]}x{top[1]}"
                warnings.append(f"{name} bias: {share(a, top):.0%} of real and {share(b, top):.0%} of fake images "
                                f"are {label}")
                break
    if real.qualities and fake.qualities:
        qr, qf = np.mean(real.qualities), np.mean(fake.qualities)
        if abs(qr - qf) > JPEG_QUALITY_GAP:
            warnings.append(f"JPEG quality bias: real images average quality {qr:.0f}, fake {qf:.0f}")
    return warnings


def count_check(generator, real_n, fake_n):
    """(status, text): the counts against the published ones (``Generator.published``)."""
    published = generator.published
    if published is None:
        return "unpublished", "no published count"
    if isinstance(published, int):
        ok = real_n + fake_n == published
        return ("ok" if ok else "mismatch"), f"{real_n + fake_n} images, published {published}"
    ok = (real_n, fake_n) == tuple(published)
    return ("ok" if ok else "mismatch"), f"{real_n} real / {fake_n} fake, published {published[0]} / {published[1]}"


def class_files(folder):
    """({label: [paths]}, FolderScan of what was set aside) over a generator folder (a leaf, or
    category folders of leaves)."""
    out, skipped = {0: [], 1: []}, FolderScan()
    for _, leaf in discover_leaves(folder):
        for name, label in LABEL_FOLDERS:
            scan = scan_images(os.path.join(leaf, name))
            out[label] += scan.images
            scan.images = []
            skipped.add(scan)
    return out, skipped


def file_hash(path):
    """SHA-256 of a file (``util.sha256_of``, 1 MiB at a time); None when it cannot be read."""
    try:
        return sha256_of(path)
    except OSError:
        return None


def parallel_map(fn, paths, workers):
    if workers <= 1 or len(paths) < 64:
        return [fn(p) for p in paths]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, paths, chunksize=32))


def inspect_all(paths, workers):
    return dict(zip(paths, parallel_map(inspect_file, paths, workers)))


SPLITS = ("train", "val", "test")


def split_of(path, dataroot):
    """'train' / 'val' / 'test' when the path lies under such a folder of ``dataroot``, else None."""
    for part in os.path.relpath(path, dataroot).split(os.sep)[:-1]:
        if part.lower() in SPLITS:
            return part.lower()
    return None


def split_folders(dataroot):
    """train / val / test folders at ``dataroot`` or one level below (ForenSynths_train_val/train)."""
    out = []
    for parent in [dataroot] + [os.path.join(dataroot, d) for d in sorted(os.listdir(dataroot))]:
        if os.path.isdir(parent):
            out += [os.path.join(parent, d) for d in sorted(os.listdir(parent))
                    if d.lower() in SPLITS and os.path.isdir(os.path.join(parent, d))]
    return out


def verify(dataroot, suites=(), workers=None):
    """The report (a dict) of every suite found under ``dataroot`` (``suites`` keeps those)."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    found, absent = find_suites(dataroot, suites)
    report = {"dataroot": dataroot, "suites": [], "absent_suites": absent, "cross_split_duplicates": []}
    every_file = {}
    for suite, suite_dir in found:
        entry = {"suite": suite.name, "folder": suite_dir, "generators": [], "missing": [], "extra": [],
                 "count_source": suite.counts_from or None}
        used = set()
        for gen in suite.generators:
            folder = locate_generator(suite_dir, gen)
            if folder is None:
                entry["missing"].append(gen.name)
                continue
            used.add(os.path.normcase(os.path.abspath(folder)))
            files, skipped = class_files(folder)
            infos = inspect_all(files[0] + files[1], workers)
            every_file.update(infos)
            entry["generators"].append(generator_report(gen, folder, files, infos, skipped))
        if not suite.custom:
            for d in sorted(os.listdir(suite_dir)):
                path = os.path.join(suite_dir, d)
                if os.path.isdir(path) and os.path.normcase(os.path.abspath(path)) not in used:
                    entry["extra"].append(d)
        report["suites"].append(entry)
    # Splits not inspected above (a training set) are only hashed, for the cross-split check.
    hashes = {p: info["sha256"] for p, info in every_file.items()}
    for folder in split_folders(dataroot):
        rest = [p for p in list_images(folder) if p not in hashes]
        hashes.update(zip(rest, parallel_map(file_hash, rest, workers)))
    by_hash = {}
    for path, digest in hashes.items():
        if digest:
            by_hash.setdefault(digest, []).append(path)
    for paths in by_hash.values():
        splits = {split_of(p, dataroot) for p in paths} - {None}
        if len(splits) > 1:
            report["cross_split_duplicates"].append(sorted(paths))
    return report


def generator_report(gen, folder, files, infos, skipped):
    stats = {label: ClassStats() for label in (0, 1)}
    for label in (0, 1):
        for p in files[label]:
            stats[label].add(infos[p])
    hashes = {}
    for label in (0, 1):
        for p in files[label]:
            if infos[p]["sha256"]:
                hashes.setdefault(infos[p]["sha256"], []).append(p)
    duplicates = [sorted(ps) for ps in hashes.values() if len(ps) > 1]
    count_status, count_text = count_check(gen, stats[0].n, stats[1].n)
    bias = format_bias(stats[0], stats[1])
    problems = []
    if count_status == "mismatch":
        problems.append(f"count mismatch ({count_text})")
    if not stats[0].n or not stats[1].n:
        problems.append("one class is empty")
    for what in ("unreadable", "truncated"):
        n = sum(len(getattr(stats[label], what)) for label in (0, 1))
        if n:
            problems.append(f"{n} {what}")
    if duplicates:
        n = sum(len(d) - 1 for d in duplicates)
        problems.append(f"{n} duplicate file{'s' if n != 1 else ''}")
    if skipped.not_regular:
        problems.append(f"{len(skipped.not_regular)} not regular files (not read)")
    if skipped.unreadable:
        problems.append(f"{len(skipped.unreadable)} unreadable folders")
    if skipped.repeated:
        problems.append(f"{len(skipped.repeated)} links to folders already listed (not counted twice)")
    problems += bias
    return {"generator": gen.name, "folder": folder, "real": stats[0].summary(), "fake": stats[1].summary(),
            "count_status": count_status, "count": count_text, "duplicates": duplicates, "bias": bias,
            "unreadable_files": stats[0].unreadable + stats[1].unreadable,
            "truncated_files": stats[0].truncated + stats[1].truncated,
            "not_regular_files": [{"path": p, "kind": k} for p, k in skipped.not_regular],
            "unreadable_folders": [{"path": p, "error": e} for p, e in skipped.unreadable],
            "repeated_folder_links": skipped.repeated,
            "verdict": "ok" if not problems else "; ".join(problems)}


def describe(summary):
    formats = ", ".join(f"{k} {v}" for k, v in summary["formats"].items()) or "-"
    size = "x".join(map(str, summary["top_size"])) if summary["top_size"] else "-"
    q = f", JPEG q~{summary['jpeg_quality_mean']:.0f}" if summary["jpeg_quality_mean"] is not None else ""
    return f"{formats}; {size} ({summary['top_size_share']:.0%}){q}"


def table_line(row, widths):
    """One line of the report's table: counts right-aligned, the verdict last and unpadded."""
    return "  ".join(c.rjust(w) if k in (1, 2) else c.ljust(w) for k, (c, w) in enumerate(zip(row[:6], widths))) \
        + "  " + row[6]


def format_report(report):
    """The per-generator table and the findings, as text."""
    lines = []
    for s in report["suites"]:
        lines.append(f"\n{s['suite']} ({s['folder']})" + (f" - counts: {s['count_source']}" if s["count_source"] else ""))
        rows = [(g["generator"], str(g["real"]["n"]), str(g["fake"]["n"]),
                 g["count"] if g["count_status"] != "unpublished" else "-", describe(g["real"]), describe(g["fake"]),
                 g["verdict"]) for g in s["generators"]]
        header = ("generator", "real", "fake", "published", "real: formats; top size", "fake: formats; top size",
                  "verdict")
        widths = [max(len(r[k]) for r in rows + [header]) for k in range(6)]
        table = [table_line(r, widths) for r in [header] + rows]
        lines += [table[0], "-" * len(table[0])] + table[1:]
        if s["missing"]:
            lines.append(f"missing generators: {', '.join(s['missing'])}")
        if s["extra"]:
            lines.append(f"extra folders (not evaluated): {', '.join(s['extra'])}")
    if report["absent_suites"]:
        lines.append(f"\nsuites asked for but absent: {', '.join(report['absent_suites'])}")
    if report["cross_split_duplicates"]:
        lines.append(f"\nthe same file in more than one of train / val / test: {len(report['cross_split_duplicates'])} "
                     f"case(s), e.g. {', '.join(report['cross_split_duplicates'][0])}")
    return "\n".join(lines).lstrip("\n")
