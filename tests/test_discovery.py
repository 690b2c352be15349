"""data/discovery.py: listing a folder's images in the reference's order over any tree
(torchvision's ImageFolder, which follows links to folders), link loops listed once, trees of any depth,
FIFOs and device links named and never opened, unreadable folders reported, and the layouts a
benchmark folder comes in."""
import os
import tempfile

import pytest
from conftest import hostile_leaf, write_leaf
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torchvision.datasets.folder import make_dataset

from data.discovery import DatasetLayoutError, discover_leaves, IMG_EXTENSIONS, list_images, make_samples, scan_images
from data.verification import verify


def test_fifo_and_device_links_are_named_never_opened(tmp_path):
    leaf = hostile_leaf(tmp_path / "suite" / "gen")
    scan = scan_images(str(leaf))
    assert len(scan.images) == 4
    kinds = {os.path.basename(p): k for p, k in scan.not_regular}
    assert kinds == {"fifo.png": "a FIFO", "zero.png": "a character device behind a link"}
    assert "2 image name(s) that are not regular files" in scan.skipped_line(str(leaf))
    # verify() must not hang on the FIFO nor read /dev/zero without end
    report = verify(str(tmp_path), (), workers=1)
    gen = report["suites"][0]["generators"][0]
    assert {os.path.basename(e["path"]) for e in gen["not_regular_files"]} == {"fifo.png", "zero.png"}
    assert "2 not regular files" in gen["verdict"]


def test_an_unreadable_folder_is_reported(tmp_path, monkeypatch, caplog):
    (tmp_path / "ok").mkdir()
    (tmp_path / "locked").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "ok" / "a.png")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.path.basename(os.fspath(path)) == "locked":  # what a folder without read permission raises
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level("WARNING", logger="npr"):
        assert list_images(str(tmp_path)) == [str(tmp_path / "ok" / "a.png")]
    assert "1 folder(s) that could not be read" in caplog.text and "Permission denied" in caplog.text


# names whose sort order differs between "path by path" and "folder after folder" ('-' and '.'
# sort before '/', '_' after it; capitals before lower case)
FOLDERS = st.sampled_from(["a", "a-b", "a.b", "a_", "B", "b"])


FILES = st.sampled_from(["x.png", "Y.JPG", "a-.webp", "_.tif", "notes.txt", "z.jpeg"])


TREES = st.lists(st.tuples(st.lists(FOLDERS, max_size=3), FILES), min_size=1, max_size=12)


def reference_order(parent, cls):
    """The reference's list of one class folder: torchvision's make_dataset, as ImageFolder calls it."""
    return [p for p, _ in make_dataset(parent, {cls: 0}, extensions=IMG_EXTENSIONS, allow_empty=True)]


def plant(root, tree):
    for folders, name in tree:
        folder = os.path.join(root, *folders)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(b"x")  # listing opens nothing


@given(tree=TREES, linked=st.lists(FILES, max_size=3), link_at=st.lists(FOLDERS, max_size=2))
def test_any_tree_is_listed_in_the_reference_order_links_followed(tree, linked, link_at):
    with tempfile.TemporaryDirectory() as tmp:
        cls = os.path.join(tmp, "1_fake")
        plant(cls, tree)
        elsewhere = os.path.join(tmp, "elsewhere")  # a folder of images linked in from outside the class folder
        plant(elsewhere, [([], name) for name in linked])
        folder = os.path.join(cls, *link_at)
        os.makedirs(folder, exist_ok=True)
        os.symlink(elsewhere, os.path.join(folder, "linked"))
        scan = scan_images(cls)
        assert scan.images == reference_order(tmp, "1_fake")
        assert not (scan.not_regular or scan.unreadable or scan.repeated)


def test_a_link_loop_lists_each_image_once_and_is_named(tmp_path):
    cls = tmp_path / "0_real"
    plant(str(cls), [([], "a.png"), (["sub"], "b.png")])
    os.symlink("..", cls / "sub" / "up")  # back to 0_real: the reference lists a.png and b.png 40 times over
    os.symlink(cls / "sub", cls / "again")  # a second way into sub
    scan = scan_images(str(cls))
    assert scan.images == [str(cls / "a.png"), str(cls / "sub" / "b.png")]
    assert sorted(scan.repeated) == [str(cls / "again"), str(cls / "sub" / "up")]
    line = scan.skipped_line(str(cls))
    assert "2 link(s) to a folder already listed, not listed twice" in line and str(cls / "sub" / "up") in line


def test_a_tree_deeper_than_pythons_recursion_limit_is_listed(tmp_path):
    deep = str(tmp_path)
    for _ in range(1100):  # os.walk recursed once per level and raised RecursionError near 1000
        deep = os.path.join(deep, "d")
        os.mkdir(deep)
    plant(deep, [([], "x.png")])
    plant(str(tmp_path), [([], "top.png")])
    try:
        assert scan_images(str(tmp_path)).images == [str(tmp_path / "top.png"), os.path.join(deep, "x.png")]
    finally:  # pytest's own clean-up of old temporary folders recurses, and would fail on this one
        os.remove(os.path.join(deep, "x.png"))
        while deep != str(tmp_path):
            os.rmdir(deep)
            deep = os.path.dirname(deep)


def test_discovery_nested_flat_and_classes(tmp_path):
    write_leaf(str(tmp_path / "flat"), 2, 3)
    assert discover_leaves(str(tmp_path / "flat")) == [("", str(tmp_path / "flat"))]
    s = make_samples(str(tmp_path / "flat"))
    assert [label for _, label in s] == [0, 0, 1, 1, 1]
    for c in ("car", "cat", "horse"):
        write_leaf(str(tmp_path / "nested" / c), 1, 1)
    assert [c for c, _ in discover_leaves(str(tmp_path / "nested"))] == ["car", "cat", "horse"]
    assert [c for c, _ in discover_leaves(str(tmp_path / "nested"), ["horse", "car"])] == ["car", "horse"]
    with pytest.raises(DatasetLayoutError, match="not found"):
        discover_leaves(str(tmp_path / "nested"), ["chair"])


def test_discovery_bad_layouts(tmp_path):
    (tmp_path / "empty" / "real").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="0_real"):
        discover_leaves(str(tmp_path / "empty"))
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        discover_leaves(str(tmp_path / "missing"))
