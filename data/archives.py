"""Archives of the downloader (``data.download``), extracted safely: no entry may leave the
target folder, the free space is checked against the sizes the archive declares, a tar must
end where its headers say it does, and a split zip is joined first."""
import glob
import os
import shutil
import struct
import subprocess
import tarfile
import zipfile

from files import need_space

CHUNK = 1 << 20


class UnsafeArchiveError(Exception):
    """An archive with an entry that would be written outside the target folder, or a link out of it."""


def archive_kind(path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    return None


def split_parts(path):
    """The parts of a split zip whose last part is ``path`` (x.zip with x.z01, x.z02, ...), in order."""
    stem = os.path.splitext(path)[0]
    parts = sorted(glob.glob(stem + ".z[0-9][0-9]*"))
    return parts + [path] if parts else []


def join_split_zip(parts, out):
    """Join a split zip (x.z01 ... x.zip) into one zip ``out``, as ``zip -s-`` does: the parts
    concatenated, the central directory's per-part disk numbers and offsets rewritten as offsets
    into the whole (only the directory is read into memory). Zip64 is left to the ``zip`` tool."""
    if shutil.which("zip") and subprocess.run(["zip", "-q", "-s-", parts[-1], "-O", out]).returncode == 0:
        return out
    starts, total = [], 0
    for p in parts:
        starts.append(total)
        total += os.path.getsize(p)
    with open(out, "wb") as f:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f, CHUNK)
    # Only the central directory and its end record are rewritten, in place; the leading
    # spanning marker stays (readers skip data before the first entry).
    with open(out, "r+b") as f:
        f.seek(max(0, total - (1 << 16) - 22))
        tail = f.read()
        eocd = tail.rfind(b"PK\x05\x06")
        if eocd < 0:
            raise ValueError("no end of central directory: not a zip")
        _, _, cd_disk, _, n_entries, cd_size, cd_offset, comment_len = struct.unpack("<4sHHHHIIH", tail[eocd:eocd + 22])
        if 0xFFFFFFFF in (cd_offset, cd_size) or n_entries == 0xFFFF:
            raise ValueError("a Zip64 split archive: join it with `zip -s- test.zip -O joined.zip` (apt-get install zip)")
        cd_start = starts[cd_disk] + cd_offset
        f.seek(cd_start)
        cd = bytearray(f.read(cd_size))
        pos = 0
        for _ in range(n_entries):
            if cd[pos:pos + 4] != b"PK\x01\x02":
                raise ValueError("a broken central directory")
            name_len, extra_len, comment_len_entry, disk = struct.unpack("<HHHH", cd[pos + 28:pos + 36])
            local = struct.unpack("<I", cd[pos + 42:pos + 46])[0]
            struct.pack_into("<H", cd, pos + 34, 0)
            struct.pack_into("<I", cd, pos + 42, starts[disk] + local)
            pos += 46 + name_len + extra_len + comment_len_entry
        f.seek(cd_start)
        f.write(cd)
        f.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n_entries, n_entries, cd_size, cd_start, comment_len))
        f.truncate()
        f.write(tail[eocd + 22:eocd + 22 + comment_len])
    return out


def check_tar_end(tar):
    """Raise ``ValueError`` unless the last member read is followed by the end-of-archive marker
    (at least two zero blocks) and nothing but zeros. tarfile takes a header it cannot read for
    the end of the archive, so a member whose header understates its size, or an archive cut at
    a member boundary, would otherwise extract in part without a word."""
    f = tar.fileobj
    f.seek(tar.offset)  # a step back within the read buffer, also in a gzip stream
    zeros = 0
    while block := f.read(CHUNK):
        if block.strip(b"\0"):
            raise ValueError(f"unreadable data at byte {tar.offset + zeros} after the last member that could be read "
                             f"({tar.getmembers()[-1].name if tar.getmembers() else 'none'}): a member's header "
                             "does not match its data, or the archive is damaged")
        zeros += len(block)
    if zeros < 2 * tarfile.BLOCKSIZE:
        raise ValueError(f"the archive ends at byte {tar.offset + zeros} without its end-of-archive marker: it was "
                         "cut short")


def check_tar_padding(tar, member):
    """Raise ``ValueError`` unless the bytes between a regular member's data and the next 512-byte
    block are zeros, as every tar writer pads them: a header that understates its size by less
    than a block leaves the rest of the data there, where tarfile skips it."""
    pad = -member.size % tarfile.BLOCKSIZE
    if not member.isreg() or not pad:
        return
    tar.fileobj.seek(member.offset_data + member.size)
    if tar.fileobj.read(pad).strip(b"\0"):
        raise ValueError(f"the member {member.name} has more data than its header's size of {member.size} bytes: "
                         "its header does not match its data, or the archive is damaged")


def extract(path, dest):
    """Extract a tar(.gz) or zip archive into ``dest``: no path may leave it (``UnsafeArchiveError``),
    the free space is checked against the sizes the archive declares (the zip's directory up
    front, each tar member before it is written), and a tar must end with its end-of-archive
    marker (``check_tar_end``)."""
    kind = archive_kind(path)
    if kind in ("tar.gz", "tar"):
        root = os.path.realpath(dest)
        with tarfile.open(path, "r:gz" if kind == "tar.gz" else "r:") as tar:
            for m in tar:
                if m.name.startswith(("/", "\\")) or os.path.isabs(m.name):  # the data filter would strip the "/"
                    raise UnsafeArchiveError(f"the entry '{m.name}' has an absolute path")
                need_space(dest, m.size, f"extracting {m.name} ({m.size} bytes)")
                if hasattr(tarfile, "data_filter"):
                    try:  # refuses absolute paths, '..', links out of dest, devices
                        tar.extract(m, dest, filter="data")
                    except tarfile.FilterError as e:
                        raise UnsafeArchiveError(str(e)) from None
                else:  # Python before 3.11.4 / 3.10.12 / 3.9.17
                    if not os.path.realpath(os.path.join(dest, m.name)).startswith(root + os.sep) or m.issym() \
                            or m.islnk() or m.isdev():
                        raise UnsafeArchiveError(f"the entry '{m.name}' would be written outside {dest}")
                    tar.extract(m, dest)
                check_tar_padding(tar, m)
            check_tar_end(tar)
    elif kind == "zip":
        with zipfile.ZipFile(path) as z:
            root = os.path.realpath(dest)
            for name in z.namelist():
                if not os.path.realpath(os.path.join(dest, name)).startswith(root + os.sep):
                    raise UnsafeArchiveError(f"the entry '{name}' would be written outside {dest}")
            need_space(dest, sum(i.file_size for i in z.infolist()), f"extracting {os.path.basename(path)}")
            z.extractall(dest)
    else:
        raise ValueError("neither a tar.gz nor a zip archive")


def flatten_single_folder(folder):
    """When ``folder`` holds only one folder (an archive's top folder), move its content up."""
    entries = [e for e in os.listdir(folder) if not e.startswith(".")]
    if len(entries) == 1 and os.path.isdir(os.path.join(folder, entries[0])):
        # Renamed first: the top folder may hold a folder of its own name (Suite/Suite/...).
        inner = os.path.join(folder, ".flatten-" + entries[0])
        os.rename(os.path.join(folder, entries[0]), inner)
        for e in os.listdir(inner):
            shutil.move(os.path.join(inner, e), os.path.join(folder, e))
        os.rmdir(inner)
