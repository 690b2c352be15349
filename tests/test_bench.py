"""bench.py: its pieces run and summarise, and figures that contradict each other are named."""
import pytest
import torch
from PIL import Image

from data.discovery import make_samples
from util import UserError


# ----------------------------------------------------------------------------- bench.py

@pytest.mark.slow
def test_bench_pieces_run_and_summarize(tmp_path):
    """bench.py's measurements on tiny inputs: each row counts the images it ran, and the summary's
    ratios are the ratios of those rows."""
    import bench
    cpu = torch.device("cpu")
    folder = bench.write_png_folder(str(tmp_path / "e"), 6, 48)
    assert len(make_samples(folder)) == 6 and Image.open(make_samples(folder)[0][0]).size == (48, 48)
    rows = bench.bench_model(cpu, 40, 4, 0.05, ["plain", "default"])
    rows += bench.bench_eval(cpu, folder, 48, 40, 4, 0, ["plain", "default"])
    for op in ("npr", "dwt"):  # SAFE's operator beside NPR's: the operator alone, the model, evaluation
        rows += bench.bench_operator(cpu, 40, 4, 0.05, op)
    rows += bench.bench_model(cpu, 40, 4, 0.05, ["plain", "default"], operator="dwt")
    rows += bench.bench_eval(cpu, folder, 48, 40, 4, 0, ["default"], operator="dwt")
    bench.write_png_folder(str(tmp_path / "t" / "train"), 8, 48)
    rows += bench.bench_train(cpu, str(tmp_path / "t"), 48, 40, 4, 0, ["default", "cache"], str(tmp_path / "c"))
    rows += bench.bench_scaling(cpu, folder, 1, size=48)
    assert all(r["images"] == 6 for r in rows if r["what"] in (bench.EVAL_E2E, bench.EVAL_SCALING))
    assert all(r["images"] == 8 for r in rows if r["what"] == bench.TRAIN_E2E)
    s = {r["size"]: r for r in bench.summarize(rows)}[40]

    def ips(what, **match):
        return bench.find(rows, what, size=40, **match)["images_per_s"]
    assert s["eval_efficiency"] == ips(bench.EVAL_E2E, variant="default", operator="npr") / ips(
        bench.MODEL_FORWARD, variant="default", operator="npr")
    assert s["dwt_cost_model"] == ips(bench.MODEL_FORWARD, variant="default", operator="npr") / ips(
        bench.MODEL_FORWARD, variant="default", operator="dwt")
    assert s["train_efficiency_cache"] == ips(bench.TRAIN_E2E, variant="cache") / ips(
        bench.MODEL_TRAIN_STEP, variant="contiguous", operator="npr")


def test_bench_names_figures_that_contradict_each_other():
    """End to end faster than the model alone cannot be: the report says the machine was busy."""
    import bench
    row = {"device": "cpu", "size": 224, "operator": "npr"}
    rows = [dict(row, what=bench.MODEL_FORWARD, variant="default", images_per_s=14.4),
            dict(row, what=bench.EVAL_E2E, variant="default", images_per_s=50.9),
            dict(row, what=bench.MODEL_TRAIN_STEP, variant="contiguous", images_per_s=30.0),
            dict(row, what=bench.TRAIN_E2E, variant="default", images_per_s=20.0)]
    (line,) = bench.inconsistencies(rows)
    assert "end-to-end eval" in line and "50.9" in line and "14.4" in line and "busy machine" in line
    assert "Not consistent" in bench.report(rows, [], {"torch": "x", "cpu_count": 2, "torch_threads": 2,
                                                        "cuda": None, "workers": {}}, [line])
    with pytest.raises(UserError, match="--only nope: unknown nope; choose from model, e2e"):
        bench.main(["--only", "nope"])
