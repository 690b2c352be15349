"""A decoded-image cache for training (``train.py --cache_dir DIR``).

The training transform starts with a deterministic step, the resize to loadSize x loadSize.
The cache stores its output once, as one memory-mapped uint8 array of shape
(N, loadSize, loadSize, 3); every epoch after that only does the random part (blur / JPEG,
crop, flip) on a view of that array, with no PNG decoding. ``TrainTransform.augment`` is the
same code the uncached path runs after its resize, so the two paths give identical tensors
for the same sample and seed (tested).

Layout of ``DIR/<key>/`` (``key`` hashes the file list, sizes, mtimes, loadSize and interpolation,
so a changed dataset or option gets a new cache and never a stale one):

    images.u8    the pixels, written in place
    state.npy    per image: 0 to do, 1 cached, 2 unreadable (skipped at load time)
    meta.json    what the cache holds
    build.lock   held while one process builds (others that share the folder wait)

Building writes pixels first and ``state.npy`` second (atomically) every few hundred images,
so an interrupted build resumes where the last ``state.npy`` says. Size on disk:
N x loadSize^2 x 3 bytes (ProGAN 4-class at 256 px: 144k images, about 28 GB).
"""
import contextlib
import hashlib
import json
import os
import random

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from files import atomic_file, check_output, need_space, no_space, reserve_file, waiting_lock, write_json_atomically

from util import log, UserError

from .images import ImageDecodeError, ImageRule, Item, load_rgb
from .transforms import resize_square


TODO, CACHED, UNREADABLE = 0, 1, 2
FLUSH_EVERY = 512  # images between durable progress marks


def cache_key(samples, load_size, interp):
    h = hashlib.sha256(json.dumps([load_size, interp]).encode())
    for path, label in samples:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0{label}\0missing\n".encode())
    return h.hexdigest()[:16]


class _DecodeResize(Dataset):
    """Workers of the build: decode and resize one image; None when unreadable."""

    def __init__(self, samples, indices, load_size, interp):
        self.samples, self.indices, self.load_size, self.interp = samples, indices, load_size, interp

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        index = self.indices[i]
        try:
            img = resize_square(load_rgb(self.samples[index][0]), self.load_size, self.interp)
        except ImageDecodeError as e:
            return index, None, str(e)
        return index, np.asarray(img, dtype=np.uint8), None


def _as_is(item):
    return item


class TrainCache:
    """The cache of one train split; ``build()`` fills it, ``dataset()`` reads it."""

    def __init__(self, cache_dir, samples, load_size, interp="bilinear"):
        self.samples, self.load_size, self.interp = list(samples), load_size, interp
        self.dir = os.path.join(cache_dir, cache_key(self.samples, load_size, interp))
        self.shape = (len(self.samples), load_size, load_size, 3)
        self.images_path = os.path.join(self.dir, "images.u8")
        self.state_path = os.path.join(self.dir, "state.npy")

    @property
    def nbytes(self):
        return int(np.prod(self.shape))

    def state(self):
        if os.path.isfile(self.state_path):
            return np.load(self.state_path)
        return np.zeros(len(self.samples), dtype=np.uint8)

    def is_complete(self):
        return bool((self.state() != TODO).all()) and os.path.isfile(self.images_path)

    def _save_state(self, state):
        with atomic_file(self.state_path, "wb") as f:
            np.save(f, state)

    def build(self, num_workers=0, progress=True):
        """Decode and resize every image not cached yet; safe to interrupt and call again.
        Unreadable images are reported and marked; the dataset skips them. Runs that share the
        folder (a sweep started at once) build it one at a time: the others wait, then find it
        built."""
        check_output(self.dir, "--cache_dir", folder=True)
        with waiting_lock(os.path.join(self.dir, "build.lock"), f"building the cache in {self.dir}"):
            return self._build(num_workers, progress)

    def _build(self, num_workers, progress):
        state = self.state()
        todo = np.flatnonzero(state == TODO).tolist()
        if not todo and os.path.isfile(self.images_path):
            return self
        if not os.path.isfile(self.images_path):
            try:
                need_space(self.dir, self.nbytes, "the cache")
                with open(self.images_path, "wb") as f:
                    reserve_file(f, self.nbytes)  # blocks taken now: a disk filled by others later is no SIGBUS
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.remove(self.images_path)
                advice = "choose another folder or drop --cache_dir" if no_space(e) else "choose another folder"
                raise UserError(f"--cache_dir '{self.dir}': {e.strerror or e}; {advice}") from None
            write_json_atomically({"n": len(self.samples), "load_size": self.load_size, "interp": self.interp,
                                   "paths": [p for p, _ in self.samples],
                                   "labels": [label for _, label in self.samples]}, os.path.join(self.dir, "meta.json"))
        log.info("Caching %d of %d training images (%dx%d, %.2f GiB) in %s", len(todo), len(self.samples),
                 self.load_size, self.load_size, self.nbytes / 2**30, self.dir)
        images = np.memmap(self.images_path, dtype=np.uint8, mode="r+", shape=self.shape)
        loader = DataLoader(_DecodeResize(self.samples, todo, self.load_size, self.interp), batch_size=None,
                            collate_fn=_as_is, num_workers=num_workers, prefetch_factor=8 if num_workers else None)
        done_since_flush = 0
        with tqdm(total=len(todo), desc="caching", unit="img", disable=None if progress else True) as bar:
            for index, arr, err in loader:
                if arr is None:
                    ImageRule().skip(self.samples[index][0], err)
                    state[index] = UNREADABLE
                else:
                    images[index] = arr
                    state[index] = CACHED
                done_since_flush += 1
                if done_since_flush >= FLUSH_EVERY:
                    images.flush()  # pixels are on disk before the state says so
                    self._save_state(state)
                    done_since_flush = 0
                bar.update(1)
        images.flush()
        self._save_state(state)
        del images
        return self

    def dataset(self, transform, rule=ImageRule()):
        if not self.is_complete():
            raise UserError(f"the cache in '{self.dir}' is incomplete; build it first")
        return CachedImageDataset(self, transform, rule)


class CachedImageDataset(Dataset):
    """``BinaryImageDataset`` over the cache: (uint8 tensor, label, index, False), None when
    unreadable (reported when the cache was built; an error when ``rule`` is strict)."""

    def __init__(self, cache, transform, rule=ImageRule()):
        check_cacheable(transform)
        if transform.load_size != cache.load_size or transform.interps[0] != cache.interp:
            raise UserError(f"the cache holds {cache.load_size}px '{cache.interp}' resizes, but the transform asks "
                            f"for {transform.load_size}px '{transform.interps[0]}'")
        self.cache, self.transform, self.rule = cache, transform, rule
        self.samples = cache.samples
        self.state = cache.state()
        self._images = None  # opened lazily, once per worker process

    def __len__(self):
        return len(self.samples)

    @property
    def labels(self):
        return [label for _, label in self.samples]

    def __getstate__(self):
        return dict(self.__dict__, _images=None)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, key)
        label = self.samples[index][1]
        if self.state[index] != CACHED:
            if self.rule.strict:
                self.rule.skip(self.samples[index][0], "unreadable when the cache was built")
            return Item(None, label, index)
        if self._images is None:
            self._images = np.memmap(self.cache.images_path, dtype=np.uint8, mode="r", shape=self.cache.shape)
        img = self.transform.augment(self._images[index], random.Random(seed))
        return Item(img, label, index)


def check_cacheable(transform):
    if len(transform.interps) != 1:
        raise UserError("--cache_dir stores images resized with one interpolation; give a single --rz_interp "
                        f"(got {','.join(transform.interps)}) or drop --cache_dir")


def cached_train_dataset(cache_dir, samples, transform, rule=ImageRule(), num_workers=0, build=True):
    """Build (or resume building) the cache for ``samples`` and return a dataset reading it."""
    check_cacheable(transform)
    cache = TrainCache(cache_dir, samples, transform.load_size, transform.interps[0])
    if build:
        cache.build(num_workers)
    return cache.dataset(transform, rule)

