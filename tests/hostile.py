"""A corpus of hostile and unusual image files, built on the fly (tests only).

``write_hostile_corpus(folder)`` writes the files and returns ``{name: status}``:
* ``ok``: decodes and is scored whatever the transform;
* ``small``: decodes, but a side is under 2 px, so it is skipped when kept at its size
  (resized or cropped, it becomes large enough and is scored);
* ``truncated``: decodes only as far as the file goes; scored (as the reference does) and counted;
* ``bad``: cannot be decoded (or is not there at all): skipped and counted.
Folders named like images are not files and are never listed.
"""
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width=30000, height=30000):
    """A tiny PNG whose header claims width x height pixels (a decompression-bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) +
            _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b""))


def _save(img, path, **kw):
    img.save(path, **kw)


def write_hostile_corpus(folder):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)

    def rgb(h, w):
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))

    status = {}

    def put(name, st, writer):
        writer(os.path.join(folder, name))
        status[name] = st

    put("one pixel 1x1.png", "small", lambda p: _save(rgb(1, 1), p))
    put("column_1x40.png", "small", lambda p: _save(rgb(40, 1), p))
    put("row_40x1.png", "small", lambda p: _save(rgb(1, 40), p))
    put("tiny_2x2.png", "ok", lambda p: _save(rgb(2, 2), p))
    put("odd_33x27.png", "ok", lambda p: _save(rgb(27, 33), p))
    put("empty.png", "bad", lambda p: open(p, "wb").close())
    jpg = io.BytesIO()
    rgb(40, 40).save(jpg, format="JPEG", quality=90)
    put("truncated.jpg", "truncated", lambda p: open(p, "wb").write(jpg.getvalue()[: len(jpg.getvalue()) // 2]))
    put("notes.jpg", "bad", lambda p: open(p, "w").write("this is a text file, not an image\n"))
    put("bomb.png", "bad", lambda p: open(p, "wb").write(bomb_png()))
    frames = [rgb(24, 24).convert("P") for _ in range(3)]
    put("animated.gif", "ok", lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0))
    pages = [rgb(24, 30) for _ in range(3)]
    put("pages.tiff", "ok", lambda p: pages[0].save(p, save_all=True, append_images=pages[1:]))
    put("deep16.png", "ok", lambda p: Image.fromarray(rng.integers(0, 65536, (20, 22)).astype(np.uint16)).save(p))
    put("cmyk.jpg", "ok", lambda p: _save(rgb(30, 20).convert("CMYK"), p, format="JPEG"))
    put("palette_alpha.png", "ok", lambda p: _save(rgb(20, 20).convert("P"), p, transparency=0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW when displayed
    put("exif_rotated.jpg", "ok", lambda p: _save(rgb(20, 32), p, format="JPEG", exif=exif))
    put("photo.webp", "ok", lambda p: _save(rgb(26, 26), p, format="WEBP", lossless=True))
    put("bitmap.bmp", "ok", lambda p: _save(rgb(18, 22), p))
    put("naïve café 写真.png", "ok", lambda p: _save(rgb(20, 20), p))
    put("UPPER.PNG", "ok", lambda p: _save(rgb(20, 20), p, format="PNG"))
    put("SHOUT.JPG", "ok", lambda p: _save(rgb(20, 20), p, format="JPEG"))
    put("dangling.png", "bad", lambda p: os.symlink(os.path.join(folder, "no_such_target.png"), p))
    os.makedirs(os.path.join(folder, "folder.png"))  # a directory named like an image: not a file
    return status
