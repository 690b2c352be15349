"""Finding, loading and transforming images; the benchmark registry; the mini benchmark."""
from .discovery import DatasetLayoutError, discover_leaves, find_child, list_images, make_samples
from .transforms import EvalTransform, TrainTransform, load_rgb, normalize_batch
from .datasets import BinaryImageDataset, EpochSampler, bucket_by_size, make_eval_loader, make_train_loader
