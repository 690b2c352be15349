"""The artifact-operator registry: a third operator is one registration, here, and every path
(train.py, checkpoints, load_detector, test.py, validate.py, predict.py with figures) takes it."""
import json
import os

import pytest
import torch
from conftest import tiny_run

import predict
import test as test_script
import train
import validate
from networks import (OPERATORS, Operator, get_operator, load_detector, operator_for_head, predict_proba,
                      register_operator, resnet50)


def horizontal_difference(x):
    """A toy operator: each pixel minus its left neighbour (wrapping), on [0, 1] pixels."""
    return x - torch.roll(x, 1, dims=-1)


@pytest.fixture
def toy():
    op = register_operator(Operator("toy", horizontal_difference, label="horizontal difference",
                                    help="a test's toy operator", pixels="unit"))
    yield op
    del OPERATORS["toy"]


def test_registry_names_and_refusals(toy):
    assert list(OPERATORS)[:2] == ["npr", "dwt"] and get_operator("toy") is toy
    with pytest.raises(ValueError, match="unknown artifact operator 'nope'; choose from npr, dwt, toy"):
        resnet50(operator="nope")
    with pytest.raises(ValueError, match="already registered"):
        register_operator(Operator("toy", torch.neg, label="other", help="other"))
    with pytest.raises(ValueError, match="num_classes"):
        Operator("bad", torch.neg, label="bad", help="bad", num_classes=3)
    # a checkpoint that names no operator is told by its head: the first registered of that width
    assert (operator_for_head(1), operator_for_head(2)) == ("npr", "dwt")


def test_toy_operator_is_what_the_first_convolution_sees(toy):
    model = resnet50(operator="toy").eval()
    x = torch.randn(2, 3, 16, 16)
    unit = x * model.pixel_std + model.pixel_mean
    assert torch.equal(model.artifact(x), horizontal_difference(unit))
    assert model.fc1.out_features == 1


@pytest.mark.slow
def test_toy_operator_trains_saves_loads_and_evaluates(toy, tiny_dataset, tmp_path, capsys):
    ck = str(tmp_path / "ck")
    assert train.main(tiny_run(tiny_dataset, ck, "--name", "toy", "--operator", "toy", "--niter", "2")) == 0
    path = os.path.join(ck, "toy", "model_epoch_last.pth")
    assert torch.load(path, weights_only=True)["operator"] == "toy"
    model = load_detector(path, device="cpu")
    assert model.operator == "toy"

    suites = tmp_path / "suites"
    os.makedirs(suites)
    os.rename(tiny_dataset / "test", suites / "CNN_synth_testset")
    capsys.readouterr()
    assert test_script.main(["--dataroot", str(suites), "--model_path", path, "--results_dir", str(tmp_path / "res"),
                             "--gpu_ids", "-1", "--batch_size", "4", "--num_threads", "0"]) in (0, None)
    assert "ProGAN" in capsys.readouterr().out
    progan = suites / "CNN_synth_testset" / "progan"
    assert validate.main(["--dataroot", str(progan), "--model_path", path, "--gpu_ids", "-1", "--no_resize",
                          "--no_crop"]) in (0, None)
    assert "6 images scored" in capsys.readouterr().out

    images = sorted(str(p) for p in progan.rglob("*.png"))
    out = str(tmp_path / "pred")
    assert predict.main([*images, "--model_path", path, "--gpu_ids", "-1", "--output", out,
                         "--visualize", str(tmp_path / "fig")]) in (0, None)
    rows = {row["path"]: row["prob_fake"] for row in json.load(open(out + ".json"))["predictions"]}
    expected = predict_proba(model, images)
    assert [rows[p] for p in images] == pytest.approx(expected.tolist(), abs=1e-6)
    figures = sorted((tmp_path / "fig").glob("*_toy.png"))
    assert len(figures) == len(images)
