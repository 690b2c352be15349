"""data/cache.py: the decoded-image cache gives the same samples and the same trained weights as
decoding, resumes its build, skips unreadable files, takes its disk blocks first, and one cache ends
whole when runs build it at once."""
import os

import numpy as np
import pytest
import torch
from conftest import race, tiny_run, TINY_RUN

import train
from data.cache import cached_train_dataset, TrainCache, UNREADABLE
from data.discovery import make_samples
from data.loaders import BinaryImageDataset
from data.transforms import train_transform
from options import parse_train_args
from util import UserError


# ----------------------------------------------------------------------------- the cache

def train_opt(*extra):
    return parse_train_args([*TINY_RUN, *extra])


@pytest.mark.parametrize("extra", [[], ["--blur_prob", "0.5", "--blur_sig", "0,2", "--jpg_prob", "0.5",
                                        "--jpg_method", "pil", "--jpg_qual", "30,100"]])
def test_cached_samples_equal_decoded_samples(tiny_dataset, tmp_path, extra):
    samples = make_samples(str(tiny_dataset / "train"))
    transform = train_transform(train_opt(*extra))
    cached = cached_train_dataset(str(tmp_path / "cache"), samples, transform)
    decoded = BinaryImageDataset(samples, transform)
    for index in range(len(samples)):
        for seed in (0, 7, 12345):
            a, la, *_ = cached[(index, seed)]
            b, lb, *_ = decoded[(index, seed)]
            assert la == lb and a.dtype == torch.uint8 and a.shape == (3, 24, 24)
            assert torch.equal(a, b), (index, seed)


def test_cache_build_resumes_and_skips_unreadable(tiny_dataset, tmp_path, monkeypatch):
    import data.cache as cache_mod
    bad = tiny_dataset / "train" / "car" / "0_real" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    samples = make_samples(str(tiny_dataset / "train"))
    transform = train_transform(train_opt())
    monkeypatch.setattr(cache_mod, "FLUSH_EVERY", 5)
    decoded = []
    real_getitem = cache_mod._DecodeResize.__getitem__

    def interrupt_after_12(self, i):
        if len(decoded) == 12:
            raise KeyboardInterrupt
        decoded.append(self.indices[i])
        return real_getitem(self, i)

    monkeypatch.setattr(cache_mod._DecodeResize, "__getitem__", interrupt_after_12)
    cache = TrainCache(str(tmp_path / "cache"), samples, 32)
    with pytest.raises(KeyboardInterrupt):
        cache.build(progress=False)
    state = cache.state()
    assert (state != 0).sum() == 10 and not cache.is_complete()  # two durable marks of 5 images each

    monkeypatch.setattr(cache_mod._DecodeResize, "__getitem__", real_getitem)
    cache.build(progress=False)
    assert cache.is_complete()
    state = cache.state()
    bad_index = [p for p, _ in samples].index(str(bad))
    assert state[bad_index] == UNREADABLE and (np.delete(state, bad_index) == 1).all()
    ds = cache.dataset(transform)
    assert ds[(bad_index, 0)][0] is None
    img, *_ = ds[(0, 3)]
    assert torch.equal(img, BinaryImageDataset(samples, transform)[(0, 3)][0])


def test_the_cache_takes_its_disk_blocks_before_writing_and_a_full_disk_is_one_line(tiny_dataset, tmp_path,
                                                                                     monkeypatch):
    """Pixels are written through a memory map: a sparse file on a disk that others fill later
    killed the build with SIGBUS, without a word."""
    import errno

    import data.cache as cache_mod
    samples = make_samples(str(tiny_dataset / "train"))
    cache = TrainCache(str(tmp_path / "cache"), samples, 32).build(progress=False)
    st = os.stat(cache.images_path)
    assert st.st_size == cache.nbytes and st.st_blocks * 512 >= cache.nbytes  # allocated, not sparse

    def disk_full(f, nbytes):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(cache_mod, "reserve_file", disk_full)  # filled between the free-space check and the file
    other = TrainCache(str(tmp_path / "other"), samples, 24)
    with pytest.raises(UserError, match="No space left on device; choose another folder or drop --cache_dir"):
        other.build(progress=False)
    assert not os.path.exists(other.images_path)


@pytest.mark.parametrize("runs", [2, 4])
def test_runs_that_build_one_cache_at_once_end_with_the_one_cache(tiny_dataset, tmp_path, monkeypatch, runs):
    """A sweep started at once with one --cache_dir: every run ends with the cache a lone build
    writes (none crashes on another's files, no pixel is zeroed by a late start)."""
    import data.cache as cache_mod
    monkeypatch.setattr(cache_mod, "FLUSH_EVERY", 1)  # a progress mark per image: the most chances to collide
    samples = make_samples(str(tiny_dataset / "train"))
    alone = TrainCache(str(tmp_path / "alone"), samples, 32).build(progress=False)
    shared = str(tmp_path / "shared")
    assert race(lambda: TrainCache(shared, samples, 32).build(progress=False), runs) == [0] * runs
    cache = TrainCache(shared, samples, 32)
    assert cache.is_complete() and (cache.state() == alone.state()).all()
    with open(cache.images_path, "rb") as a, open(alone.images_path, "rb") as b:
        assert a.read() == b.read()


def test_cache_refuses_several_interpolations(tiny_dataset, tmp_path):
    samples = make_samples(str(tiny_dataset / "train"))
    with pytest.raises(UserError, match="single --rz_interp"):
        transform = train_transform(train_opt("--rz_interp", "bilinear,bicubic"))
        cached_train_dataset(str(tmp_path / "c"), samples, transform)


@pytest.mark.slow
def test_training_from_the_cache_gives_the_same_weights(tiny_dataset, tmp_path):
    common = tiny_run(tiny_dataset, tmp_path, "--niter", "1", "--deterministic", "--blur_prob", "0.3", "--jpg_prob",
                      "0.3", "--jpg_method", "pil")
    assert train.main(common + ["--name", "decoded"]) == 0
    assert train.main(common + ["--name", "cached", "--cache_dir", str(tmp_path / "cache")]) == 0
    a = torch.load(tmp_path / "decoded" / "model_epoch_last.pth", weights_only=True)["model"]
    b = torch.load(tmp_path / "cached" / "model_epoch_last.pth", weights_only=True)["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
