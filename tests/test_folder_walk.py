"""Listing a folder's images: the reference's order over any tree (torchvision's ImageFolder,
which follows links to folders), link loops listed once, trees of any depth."""
import os
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from torchvision.datasets.folder import make_dataset

from data.discovery import IMG_EXTENSIONS, scan_images

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


def test_the_verifier_names_a_link_loop_and_counts_each_image_once(tmp_path):
    from conftest import write_leaf

    from data.verification import verify
    gen = tmp_path / "suite" / "gen"
    write_leaf(str(gen), 2, 2)
    os.symlink("..", gen / "1_fake" / "up")  # back to gen: its 0_real would be counted as fakes too
    report = verify(str(tmp_path), (), workers=1)
    g = report["suites"][0]["generators"][0]
    assert (g["real"]["n"], g["fake"]["n"]) == (2, 4)  # 1_fake's own two, and 0_real's two through the link
    assert g["repeated_folder_links"] == [str(gen / "1_fake" / "up" / "1_fake")]
    assert "1 links to folders already listed (not counted twice)" in g["verdict"]
