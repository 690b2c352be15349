"""engine.py: the default evaluation equals the reference's plain pipeline, and batching by size gives
the reference's batch-size-1 predictions."""
import numpy as np
import torch
import torchvision.transforms as T
from conftest import calibrate, randomized_model, write_leaf
from PIL import Image

from data.discovery import make_samples
from data.transforms import EvalTransform
from engine import EvalConfig, evaluate_folder
from networks import prepare_model, resnet50


def test_default_evaluation_equals_plain_reference_pipeline(tmp_path):
    """evaluate_folder (uint8 until the model, folded BN, channels-last, inference_mode) against
    torchvision's Resize / CenterCrop / ToTensor / Normalize and a plain fp32 contiguous forward."""
    write_leaf(str(tmp_path / "d"), 5, 5, size=(37, 45), seed=3)
    samples = make_samples(str(tmp_path / "d"))
    reference = T.Compose([T.Resize((32, 32)), T.CenterCrop(28), T.ToTensor(),
                           T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = torch.stack([reference(Image.open(p).convert("RGB")) for p, _ in samples])
    model = calibrate(randomized_model(1), x)
    fast = evaluate_folder(prepare_model(model, torch.device("cpu")), str(tmp_path / "d"), EvalTransform(32, 28),
                           EvalConfig(device=torch.device("cpu"), batch_size=4))
    plain = resnet50(num_classes=1)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        expected = torch.sigmoid(plain(x)).flatten().numpy()
    assert fast["y_true"].tolist() == [label for _, label in samples]
    assert expected.std() > 0.1
    assert np.abs(fast["y_prob"] - expected).max() <= 1e-4


def test_size_buckets_give_the_reference_batch_size_1_predictions(tmp_path):
    """Mixed-size suites run in size buckets; the reference needs batch size 1 there. In eval
    mode an image's score does not depend on its batch-mates, up to float rounding (kernels
    differ with the batch size; 7e-5 seen here)."""
    write_leaf(str(tmp_path / "d" / "a"), 3, 3, size=(32, 32), seed=4)
    write_leaf(str(tmp_path / "d" / "b"), 3, 3, size=(40, 26), seed=5)
    model = randomized_model(2)
    x = torch.randn(4, 3, 32, 32)
    model = calibrate(model, x)
    runs = [evaluate_folder(prepare_model(model, torch.device("cpu"), channels_last=False, fold_bn=False),
                            str(tmp_path / "d"), EvalTransform(resize=False, crop=False),
                            EvalConfig(device=torch.device("cpu"), batch_size=b, channels_last=False)) for b in (1, 8)]
    assert runs[0]["y_true"].tolist() == runs[1]["y_true"].tolist()
    assert np.abs(runs[0]["y_prob"] - runs[1]["y_prob"]).max() <= 1e-4
