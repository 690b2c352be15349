"""Datasets, samplers and loaders.

* ``BinaryImageDataset`` decodes one (path, label) sample through an ``ImageRule``: an
  unusable image becomes a logged skip (or an error when strict), never a crash in a worker.
* ``EpochSampler`` gives a seeded order per epoch (optionally class-balanced, optionally
  sharded across distributed ranks) and can start mid-epoch, which is what makes resuming
  reproduce the same data order.
* ``bucket_by_size`` groups equally sized images so that un-resized, mixed-size test sets
  run with batches larger than 1; ``SizeBuckets`` does it window by window for a stream.
"""
import os
import random
import signal
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from .cache import cached_train_dataset
from .discovery import unopenable
from .images import ImageRule, Item


def sample_seed(seed, epoch, position):
    """A per-sample augmentation seed that depends only on (seed, epoch, position)."""
    return (seed * 1_000_003 + epoch * 7_919_993 + position) % (2**63)


class BinaryImageDataset(Dataset):
    """(path or PIL image, label) samples -> (uint8 image tensor, label, index, truncated, why
    skipped); None image when ``rule`` (an ``ImageRule``) skips the file.

    Keys are either an index (evaluation) or ``(index, seed)`` from ``EpochSampler``
    (training: the seed drives that sample's random augmentation).
    """

    def __init__(self, samples, transform, rule=ImageRule()):
        self.samples = list(samples)
        self.transform = transform
        self.rule = rule

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, key)
        path, label = self.samples[index]
        img, truncated, why = self.rule.load(path, self.transform, random.Random(seed))
        return Item(img, label, index, truncated, why)

    @property
    def labels(self):
        return [label for _, label in self.samples]


@dataclass
class Batch:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # float (N,)
    indices: torch.Tensor  # long (N,): positions in the dataset
    skipped: list  # dataset indices that could not be used (unreadable or too small)
    truncated: list = ()  # dataset indices of truncated files that were scored
    skipped_why: list = ()  # for each of ``skipped``: 'unreadable', 'too small' or 'too large'

    def pin_memory(self):
        self.images, self.labels = self.images.pin_memory(), self.labels.pin_memory()
        return self


def collate_skipping(items, evaluation=False):
    """Stack the usable images of ``Item``s; report the others in ``Batch.skipped``.

    ``evaluation``: a batch of one image is a view of it, not a copy (a large photo is alone in
    its size bucket), and images of different sizes (a file replaced between the header read
    that bucketed it and its decoding) give a list of one ``Batch`` per size, in order of
    appearance, instead of an error; ``batches`` flattens it."""
    good = [it for it in items if it.image is not None]
    skipped = [it.index for it in items if it.image is None]
    why = [it.why or "unreadable" for it in items if it.image is None]
    truncated = [it.index for it in good if it.truncated]
    if not good:
        empty = torch.zeros((0, 3, 1, 1), dtype=torch.uint8)
        return Batch(empty, torch.zeros(0), torch.zeros(0, dtype=torch.long), skipped, truncated, why)
    shapes = list(dict.fromkeys(tuple(it.image.shape) for it in good))
    if len(shapes) > 1:
        if not evaluation:
            raise RuntimeError(f"images of different sizes {sorted(shapes)} in one batch; bucket them by size")
        parts = [collate_skipping([it for it in good if tuple(it.image.shape) == shape], True) for shape in shapes]
        parts[0].skipped, parts[0].skipped_why = skipped, why
        return parts
    images = good[0].image.unsqueeze(0) if evaluation and len(good) == 1 else torch.stack([it.image for it in good])
    return Batch(images, torch.tensor([float(it.label) for it in good]),
                 torch.tensor([it.index for it in good], dtype=torch.long), skipped, truncated, why)


def batches(loader):
    """The ``Batch`` objects of an evaluation loader, one at a time (``collate_skipping`` may give
    several for one batch of indices)."""
    for item in loader:
        yield from (item if isinstance(item, list) else (item,))


class EpochSampler(Sampler):
    """Seeded per-epoch order of ``(index, augmentation_seed)`` keys.

    * shuffle (default) or serial order; ``class_balance`` draws real and fake with equal
      probability (with replacement, as the reference's ``WeightedRandomSampler``).
    * ``rank`` / ``world_size`` shard the epoch for DistributedDataParallel (each rank gets
      ``ceil(n / world_size)`` keys, padding by wrap-around as ``DistributedSampler`` does).
    * ``set_epoch(e, start=k)`` skips the first ``k`` keys of this rank: a resumed run sees
      exactly the batches it had not seen yet.
    """

    def __init__(self, labels, seed=0, shuffle=True, class_balance=False, rank=0, world_size=1):
        self.labels = list(labels)
        self.seed, self.shuffle, self.class_balance = seed, shuffle, class_balance
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, min(start, -(-len(self.labels) // self.world_size))  # past the end: done

    def epoch_indices(self, epoch):
        n = len(self.labels)
        g = torch.Generator().manual_seed(self.seed * 10_007 + epoch)
        if self.class_balance:
            counts = torch.bincount(torch.tensor(self.labels), minlength=2).float()
            weights = 1.0 / counts[torch.tensor(self.labels)]
            order = torch.multinomial(weights, n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        per_rank = -(-n // self.world_size)
        order += order[: per_rank * self.world_size - n]
        return order[self.rank::self.world_size]

    def __iter__(self):
        order = self.epoch_indices(self.epoch)
        for pos in range(self.start, len(order)):
            yield order[pos], sample_seed(self.seed, self.epoch, pos * self.world_size + self.rank)

    def __len__(self):
        return -(-len(self.labels) // self.world_size) - self.start


def image_size(path):
    """(width, height) from the file header (or of a PIL image), or None when the file cannot
    be opened."""
    if isinstance(path, Image.Image):
        return path.size
    if unopenable(path):  # a FIFO would block here; the loader reports it as unusable
        return None
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # any unreadable header: the loader will log the skip
        return None


def bucket_by_size(sizes, batch_size):
    """Group indices of equal ``sizes`` into batches of at most ``batch_size``.

    Buckets keep the original order inside each size; ``None`` sizes (unreadable headers)
    form their own bucket so the loader can report them.
    """
    buckets = {}
    for i, s in enumerate(sizes):
        buckets.setdefault(s, []).append(i)
    batches = []
    for _, idx in sorted(buckets.items(), key=lambda kv: (kv[0] is None, kv[0] or (0, 0))):
        batches += [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    return batches


class SizeBuckets:
    """The evaluation loader's batches: indices of ``images`` in batches of at most
    ``batch_size``.

    When the transform keeps the input size (no resize, no crop; ``transform=None`` keeps the
    pixels as they are), images are grouped by output size, read from their headers, so that
    a batch never mixes sizes; order is kept within a size. With ``window``, headers are read
    and buckets formed ``window`` images at a time, so a scan of any length starts at once and
    its batches never span more than a window (a stream scored in input order waits for at
    most one window); without it, the whole list is one window (``test.py``).
    """

    def __init__(self, images, transform, batch_size, window=None):
        self.images, self.transform, self.batch_size = images, transform, batch_size
        self.window = window or max(1, len(images))
        # a resize or crop gives every image the same size: batches in order, no header read
        self.fixed = transform is not None and (transform.resize or transform.crop)

    def output_size(self, image):
        size = image_size(image)
        if size is None or self.transform is None:
            return size
        return self.transform.output_size(*size)

    def __iter__(self):
        n, bs = len(self.images), self.batch_size
        for start in range(0, n, self.window):
            stop = min(n, start + self.window)
            if self.fixed:
                yield from (list(range(i, min(i + bs, stop))) for i in range(start, stop, bs))
                continue
            sizes = [self.output_size(self.images[i]) for i in range(start, stop)]
            yield from ([start + i for i in batch] for batch in bucket_by_size(sizes, bs))

    def __len__(self):
        return sum(1 for _ in self)  # reads the headers when sizes vary; nothing on the scoring path asks


def default_workers(requested, device=None):
    """Data-loading worker processes: ``requested`` capped by the CPU count; ``None`` (the
    scripts' default) picks for the device: all cores (up to 8) feed a GPU, while on a CPU
    device, where the workers share the cores with the model, a quarter of the cores
    (docs/speed.md has the measurement behind that choice)."""
    cpus = os.cpu_count() or 1
    if requested is not None:
        return max(0, min(requested, cpus))
    if device is not None and device.type == "cpu":
        return min(8, cpus // 4)
    return min(8, cpus)


def loader_kwargs(num_workers, device, persistent=False):
    """DataLoader settings per device: pinned memory and deeper prefetch feed a GPU; on the CPU
    the workers share the cores with the model, so they prefetch less. ``persistent`` keeps
    training workers alive between epochs (no re-spawn per epoch)."""
    cuda = device is not None and device.type == "cuda"
    kw = {"num_workers": num_workers, "collate_fn": collate_skipping, "pin_memory": cuda}
    if num_workers > 0:
        kw.update(persistent_workers=persistent, prefetch_factor=4 if cuda else 2)
    return kw


def make_eval_loader(samples, transform, batch_size, num_workers=0, device=None, rule=ImageRule(), window=None):
    """The one evaluation loader (test.py, validate.py, predict.py, ``predict_proba``, the demo):
    ``samples`` ((path or PIL image, label)) decoded by ``rule``, in ``SizeBuckets`` batches,
    with workers and, on CUDA, pinned memory."""
    dataset = BinaryImageDataset(samples, transform, rule)
    batches = SizeBuckets([image for image, _ in dataset.samples], transform, batch_size, window)
    kwargs = dict(loader_kwargs(num_workers, device), collate_fn=partial(collate_skipping, evaluation=True))
    return DataLoader(dataset, batch_sampler=batches, **kwargs)


def make_train_loader(dataset, batch_size, sampler, num_workers=0, device=None):
    """The training loader: ``batch_size`` images per process, in ``sampler``'s order."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=False,
                      **loader_kwargs(num_workers, device, persistent=num_workers > 0))


def ignore_signals_in_worker(_):
    # Ctrl-C reaches the whole process group; workers leave the shutdown to the main process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def train_loader(samples, transform, batch_size, sampler_kwargs, *, rule=ImageRule(), cache_dir=None, workers=0,
                 cache_workers=0, device=None, rank=0, world=1):
    """(loader, sampler) of train.py: ``samples`` decoded, or read from ``cache_dir`` (built by rank
    0 while the others wait), ``batch_size`` per process in ``EpochSampler(**sampler_kwargs)`` order."""
    if not cache_dir:
        dataset = BinaryImageDataset(samples, transform, rule)
    else:
        if rank == 0:
            dataset = cached_train_dataset(cache_dir, samples, transform, rule, cache_workers)
        if world > 1:
            dist.barrier()
        if rank != 0:
            dataset = cached_train_dataset(cache_dir, samples, transform, rule, build=False)
    sampler = EpochSampler(dataset.labels, rank=rank, world_size=world, **sampler_kwargs)
    loader = make_train_loader(dataset, batch_size, sampler, workers, device)
    loader.worker_init_fn = ignore_signals_in_worker
    return loader, sampler
