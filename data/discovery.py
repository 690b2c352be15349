"""Finding datasets on disk (the CNNDetection / NPR layout).

A *leaf* is a folder holding ``0_real`` and ``1_fake``. A dataset folder is a leaf itself or
holds category folders that are leaves (``progan/airplane/0_real``). Labels come from the
folder: 0 = real, 1 = fake.
"""
import collections
import os
from dataclasses import dataclass, field

from files import file_kind
from util import log, UserError


IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
LABEL_FOLDERS = (("0_real", 0), ("1_fake", 1))

LAYOUT_HELP = ("expected <folder>/0_real and <folder>/1_fake, or category folders each holding them, "
               "e.g. <folder>/car/0_real, <folder>/car/1_fake")


class DatasetLayoutError(UserError):
    pass


def is_leaf(path):
    return all(os.path.isdir(os.path.join(path, name)) for name, _ in LABEL_FOLDERS)


def require_folder(path, what):
    """A ``DatasetLayoutError`` unless ``path`` is a folder: it does not exist, or what it is."""
    if os.path.isdir(path):
        return
    kind = file_kind(path) if os.path.lexists(path) else None
    raise DatasetLayoutError(f"{what} '{path}' " + ("does not exist" if kind is None else
                                                    f"is {'a file' if kind == 'file' else kind}, not a folder"))


def discover_leaves(root, classes=None):
    """Return ``[(category, leaf_path), ...]`` under ``root`` (category '' when root is a leaf).

    ``classes`` keeps only those category folders (a missing one is an error).
    """
    require_folder(root, "dataset folder")
    if is_leaf(root):
        if classes:
            raise DatasetLayoutError(f"--classes {','.join(classes)} given but '{root}' holds 0_real/1_fake directly "
                                     "(no category folders)")
        return [("", root)]
    cats = sorted(d for d in os.listdir(root) if is_leaf(os.path.join(root, d)))
    if classes:
        missing = [c for c in classes if c not in cats]
        if missing:
            raise DatasetLayoutError(f"categories {missing} not found in '{root}' (found: {', '.join(cats) or 'none'})")
        cats = [c for c in cats if c in classes]
    if not cats:
        raise DatasetLayoutError(f"no 0_real / 1_fake folders in '{root}': {LAYOUT_HELP}")
    return [(c, os.path.join(root, c)) for c in cats]


@dataclass
class FolderScan:
    """What ``scan_images`` found below a folder."""
    images: list = field(default_factory=list)       # regular image files (links to them included)
    not_regular: list = field(default_factory=list)  # (path, what it is): image names that are no file to read
    unreadable: list = field(default_factory=list)   # (folder, why): subfolders that could not be listed
    repeated: list = field(default_factory=list)     # links to a folder already listed (a loop, a second way in)

    def add(self, other):
        """Take in another scan's findings (several folders reported as one)."""
        for name in ("images", "not_regular", "unreadable", "repeated"):
            getattr(self, name).extend(getattr(other, name))

    def add_image(self, path):
        """Take in one image name: listed when it may be opened, else noted as not a regular file."""
        kind = unopenable(path)
        if kind is None:
            self.images.append(path)
        else:
            self.not_regular.append((path, kind))

    def skipped_line(self, folder):
        """One line on what was skipped, or '' when nothing was."""
        def some(items, show=str):
            return ", ".join(show(i) for i in items[:3]) + (", ..." if len(items) > 3 else "")
        parts = []
        if self.not_regular:
            parts.append(f"{len(self.not_regular)} image name(s) that are not regular files, never opened: "
                         + some(self.not_regular, lambda i: f"{i[0]} ({i[1]})"))
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} folder(s) that could not be read: "
                         + some(self.unreadable, lambda i: f"{i[0]} ({i[1]})"))
        if self.repeated:
            parts.append(f"{len(self.repeated)} link(s) to a folder already listed, not listed twice: "
                         + some(self.repeated))
        return f"skipped under {folder}: " + "; ".join(parts) if parts else ""


def unopenable(path):
    """None when ``path`` may be opened as an image: a regular file, a link to one, a broken link
    or nothing (opening either fails at once: an unreadable image), or no path at all (a PIL
    image, a file object); else what it is (``files.file_kind``), which must never be opened."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    kind = file_kind(path)
    return None if kind in ("file", "a broken link", "nothing") else kind


def scan_images(folder):
    """A ``FolderScan`` of the image files below ``folder``, in the reference's order (torchvision's
    ``ImageFolder``: folders sorted by path, files by name, links to folders followed). Each folder
    is listed once: a link back to a folder above it, or a second link to one folder, is named
    and not followed again (the reference follows a loop 40 levels deep). Entries with an image
    name that are not regular files (FIFOs, devices, sockets, links to them), and subfolders that
    cannot be listed, are set aside and named, never opened or silently dropped. A broken link
    stays in: opening it fails at once, and it is counted as an unreadable image. The walk keeps
    its own stack, so a tree of any depth is listed; links to folders are followed after the
    folders themselves, so a folder reached both ways is listed under its own path."""
    scan, seen, listed, pending, links = FolderScan(), set(), [], [folder], collections.deque()
    while pending or links:
        path = pending.pop() if pending else links.popleft()
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                scan.repeated.append(path)
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as e:
            scan.unreadable.append((path, e.strerror or str(e)))
            continue
        subfolders, names = [], []
        for entry in sorted(entries, key=lambda e: e.name):
            if is_folder(entry):
                (links.append if entry.is_symlink() else subfolders.append)(entry.path)
            elif entry.name.lower().endswith(IMG_EXTENSIONS):
                names.append(entry.name)
        listed.append((path, names))
        pending += reversed(subfolders)  # depth first, smallest name first
    for path, names in sorted(listed):
        for name in names:
            scan.add_image(os.path.join(path, name))
    return scan


def is_folder(entry):
    """Whether a ``DirEntry`` is a folder or a link to one (as ``os.walk(followlinks=True)`` sees it)."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def list_images(folder):
    """Image files below ``folder`` (recursively), sorted for a reproducible order; what
    ``scan_images`` sets aside is logged as one warning."""
    scan = scan_images(folder)
    line = scan.skipped_line(folder)
    if line:
        log.warning(line)
    return scan.images


def make_samples(root, classes=None):
    """``[(path, label), ...]`` for every image of every leaf under ``root``."""
    samples = []
    for _, leaf in discover_leaves(root, classes):
        for name, label in LABEL_FOLDERS:
            samples += [(p, label) for p in list_images(os.path.join(leaf, name))]
    if not samples:
        raise DatasetLayoutError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under '{root}'")
    return samples


def find_child(parent, name):
    """The child folder of ``parent`` called ``name``, matched case-insensitively; None if absent.

    ``name`` may contain '/' to descend several levels.
    """
    path = parent
    for part in name.strip("/").split("/"):
        if not os.path.isdir(path):
            return None
        exact = os.path.join(path, part)
        if os.path.isdir(exact):
            path = exact
            continue
        matches = [d for d in sorted(os.listdir(path)) if d.lower() == part.lower() and os.path.isdir(os.path.join(path, d))]
        if not matches:
            return None
        path = os.path.join(path, matches[0])
    return path
