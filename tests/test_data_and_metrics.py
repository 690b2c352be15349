import random

import numpy as np
import pytest
import torch
from conftest import write_leaf
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from data.discovery import DatasetLayoutError, discover_leaves, make_samples
from data.loaders import EpochSampler, bucket_by_size, make_eval_loader
from data.transforms import EvalTransform, normalize_batch, tile_to_min_size, train_transform
from metrics import compute_metrics
from options import parse_train_args


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    m = compute_metrics(y, p)
    assert m["acc"] == pytest.approx(accuracy_score(y, p > 0.5))
    assert m["ap"] == pytest.approx(average_precision_score(y, p))
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["r_acc"] == pytest.approx(accuracy_score(y[y == 0], p[y == 0] > 0.5))
    assert m["f_acc"] == pytest.approx(accuracy_score(y[y == 1], p[y == 1] > 0.5))
    brute = max(accuracy_score(y, p >= t) for t in np.unique(p))
    assert m["best_acc"] == pytest.approx(brute)
    assert m["n_real"] == int((y == 0).sum()) and m["n_fake"] == int((y == 1).sum())


def test_metrics_one_class_is_nan_not_crash():
    m = compute_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert np.isnan(m["ap"]) and np.isnan(m["auc"]) and m["r_acc"] == pytest.approx(2 / 3)
    m = compute_metrics([1, 1, 1], [0.1, 0.7, 0.2])  # fakes only: AP would be 1 whatever the scores
    assert np.isnan(m["ap"]) and np.isnan(m["auc"]) and m["f_acc"] == pytest.approx(1 / 3)


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


def test_normalize_matches_torchvision():
    from torchvision import transforms as T
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ref = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(x.float() / 255)
    assert torch.equal(normalize_batch(x), ref)


def test_train_transform_deterministic_per_seed_and_shapes():
    from PIL import Image
    opt = parse_train_args(["--loadSize", "40", "--cropSize", "32", "--blur_prob", "0.5",
                            "--jpg_prob", "0.5", "--jpg_method", "pil"])
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8))
    t = train_transform(opt)
    a, b = t(img, random.Random(7)), t(img, random.Random(7))
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8 and torch.equal(a, b)
    outs = {t(img, random.Random(s)).sum().item() for s in range(8)}
    assert len(outs) > 1


def test_tiling_small_images():
    from PIL import Image
    img = Image.fromarray(np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3))
    out = tile_to_min_size(img, 16)
    assert out.size[0] >= 16 and out.size[1] >= 16
    assert np.array_equal(np.asarray(out)[5:10, 7:14], np.asarray(img))
    assert EvalTransform(256, 16, resize=False, crop=True)(img).shape == (3, 16, 16)


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


def test_decide_threshold_is_one_rule_for_every_choice(tmp_path):
    from metrics import PAPER_THRESHOLD, decide_threshold
    from util import UserError
    assert decide_threshold("auto", 0.3) == (0.3, "stored by train.py: best balanced accuracy on its validation split",
                                             False)
    auto = decide_threshold("auto", None)
    assert auto.value == PAPER_THRESHOLD and auto.is_paper_rule and "stores no threshold" in auto.source
    assert decide_threshold("paper", 0.3).value == PAPER_THRESHOLD and decide_threshold("paper", 0.3).is_paper_rule
    assert decide_threshold("stored", 0.3).value == 0.3
    with pytest.raises(UserError, match="holds no threshold"):
        decide_threshold("stored", None)
    given = decide_threshold(0.7, 0.3, given_by="the page's slider")
    assert given == (0.7, "given with the page's slider", False)
    with pytest.raises(UserError, match="a probability or one of auto, stored, paper"):
        decide_threshold("sometimes", 0.3)
    # calibration wins: at most 25% of these four reals are called fake
    calibrated = decide_threshold("paper", 0.3, str(tmp_path), 0.25, lambda folder: [0.1, 0.2, float("nan"), 0.9, 0.4])
    assert calibrated.value == 0.4 and calibrated.source.startswith("calibrated on 4 real images")
