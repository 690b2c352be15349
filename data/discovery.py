"""Finding datasets on disk (the CNNDetection / NPR layout).

A *leaf* is a folder holding ``0_real`` and ``1_fake``. A dataset folder is a leaf itself or
holds category folders that are leaves (``progan/airplane/0_real``). Labels come from the
folder: 0 = real, 1 = fake.
"""
import os

from util import UserError

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
LABEL_FOLDERS = (("0_real", 0), ("1_fake", 1))

LAYOUT_HELP = ("expected <folder>/0_real and <folder>/1_fake, or category folders each holding them, "
               "e.g. <folder>/car/0_real, <folder>/car/1_fake")


class DatasetLayoutError(UserError):
    pass


def is_leaf(path):
    return all(os.path.isdir(os.path.join(path, name)) for name, _ in LABEL_FOLDERS)


def discover_leaves(root, classes=None):
    """Return ``[(category, leaf_path), ...]`` under ``root`` (category '' when root is a leaf).

    ``classes`` keeps only those category folders (a missing one is an error).
    """
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"dataset folder '{root}' does not exist")
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


def list_images(folder):
    """Image files below ``folder`` (recursively), sorted for a reproducible order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        out += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(IMG_EXTENSIONS)]
    return out


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
