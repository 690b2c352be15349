"""data/loaders.py: batches of equal sizes, mixed-size folders, and the epoch sampler (seeded, resumable,
class-balanced)."""
import numpy as np
from conftest import write_leaf

from data.discovery import make_samples
from data.loaders import bucket_by_size, EpochSampler, make_eval_loader
from data.transforms import EvalTransform


def test_bucket_by_size_groups_equal_sizes():
    sizes = [(32, 32), (48, 32), (32, 32), None, (48, 32), (32, 32)]
    batches = bucket_by_size(sizes, 2)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len({sizes[i] for i in b}) == 1 and len(b) <= 2


def test_mixed_size_loader_batches_more_than_one(tmp_path):
    write_leaf(str(tmp_path / "a"), 3, 3, size=(32, 32))
    write_leaf(str(tmp_path / "b"), 3, 3, size=(40, 24), seed=1)
    samples = make_samples(str(tmp_path / "a")) + make_samples(str(tmp_path / "b"))
    loader = make_eval_loader(samples, EvalTransform(256, 224, resize=False, crop=False), batch_size=4)
    batches = list(loader)
    assert sum(len(b.labels) for b in batches) == 12
    assert max(len(b.labels) for b in batches) == 4


def test_epoch_sampler_seeded_resumable_and_balanced():
    labels = [0] * 30 + [1] * 10
    s = EpochSampler(labels, seed=3)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=15)
    assert list(s) == full[15:]
    s2 = EpochSampler(labels, seed=3)
    s2.set_epoch(2)
    assert list(s2) == full
    s.set_epoch(3)
    assert [i for i, _ in s] != [i for i, _ in full]
    bal = EpochSampler(labels * 50, seed=0, class_balance=True)
    frac = np.mean([(labels * 50)[i] for i, _ in bal])
    assert 0.4 < frac < 0.6
    shards = [list(EpochSampler(labels, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 20
    assert sorted(i for sh in shards for i, _ in sh) == list(range(40))
