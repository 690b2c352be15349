"""The first command to run on a machine with a GPU: prove and time every CUDA path, in one go.

    python gpu_check.py                 # a few minutes on one GPU; on a CPU-only machine the CUDA parts are skipped

1. The CUDA tests (``tests/test_cuda.py``: evaluation against the CPU for the default path,
   ``--amp``, channels-last and SAFE's operator; ``--exact`` bit for bit; ``--amp`` training and
   resume; ``torchrun`` with NCCL; ``--sync_bn`` on two GPUs against one (named in the report);
   ``predict.py``, ``predict_proba`` and the demo on the GPU; the decoded-image cache and
   pinned memory).
2. A short ``bench.py`` run (``--only model,e2e,loader``), on CUDA when there is one (a quick
   one on the CPU otherwise, and the report says so): model forward and training step (plain,
   default, ``--amp``), end-to-end evaluation and training on generated 256 px PNGs, and the
   training loader alone, so that the loader's images/s can be read against the model's.
3. The projected wall time of the paper's recipe (50 epochs on ProGAN 4-class) on this device,
   from the measured training and evaluation throughput.

Writes ``--output/report.md`` and ``report.json``; needs no data (the images are generated).
"""
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import torch

from bench import EVAL_E2E, LOADER_ONLY, MODEL_TRAIN_STEP, NPR, TRAIN_E2E, find, inconsistencies
from report import format_table
from files import atomic_file, check_output, write_json_atomically
from util import OneLineErrorParser, run_cli

ROOT = os.path.dirname(os.path.abspath(__file__))
# The paper's recipe: 4 LSUN classes of CNNDetection's ProGAN training set (Wang et al., CVPR
# 2020: 36,000 training images per class, half real, half fake; 200 validation images per class),
# 50 epochs, a validation pass after each.
PAPER_TRAIN_IMAGES = 4 * 36_000
PAPER_VAL_IMAGES = 4 * 200
PAPER_EPOCHS = 50


SYNC_BN_TEST = "test_sync_bn_on_two_gpus_follows_one_gpu"  # tests/test_cuda.py: --sync_bn on 2 GPUs against 1


def run_cuda_tests(out_dir):
    """(counts of passed / failed / skipped tests, names of failures, {test name: its outcome
    and, when skipped, why}), from pytest's JUnit XML."""
    xml = os.path.join(out_dir, "cuda-tests.xml")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
                    os.path.join("tests", "test_cuda.py"), f"--junitxml={xml}"], cwd=ROOT)
    if not os.path.isfile(xml):
        return {"passed": 0, "failed": 0, "skipped": 0, "error": "pytest wrote no report"}, [], {}
    failed, counts, outcomes = [], {"passed": 0, "failed": 0, "skipped": 0}, {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        kinds = {child.tag: child for child in case}
        if set(kinds) & {"failure", "error"}:
            counts["failed"] += 1
            failed.append(case.get("name"))
            outcomes[case.get("name")] = "failed"
        elif "skipped" in kinds:
            counts["skipped"] += 1
            outcomes[case.get("name")] = f"skipped ({kinds['skipped'].get('message', '')})"
        else:
            counts["passed"] += 1
            outcomes[case.get("name")] = "passed"
    return counts, failed, outcomes


def run_bench(device, out_dir, args):
    """bench.py's model, end-to-end and loader rows on ``device`` (a short run; ``--quick`` on the
    CPU), read back from its bench.json."""
    out = os.path.join(out_dir, "bench")
    argv = ["bench.py", "--devices", device.type, "--only", "model,e2e,loader", "--output", out,
            "--batch_size", str(args.batch_size), "--seconds", str(args.seconds)]
    argv += ["--eval_images", "1024", "--train_images", "2048"] if device.type == "cuda" else ["--quick"]
    r = subprocess.run([sys.executable, *argv], cwd=ROOT)
    if r.returncode != 0:
        return [], f"bench.py exited with {r.returncode}"
    with open(os.path.join(out, "bench.json")) as f:
        return json.load(f)["results"], None


def projection(rows):
    """Projected hours of the paper's 50-epoch recipe from the measured end-to-end throughput."""
    train, val = find(rows, TRAIN_E2E, variant="default", size=224), find(rows, EVAL_E2E, variant="default", size=224,
                                                                             operator=NPR)
    if not train or not val:
        return None
    seconds = PAPER_EPOCHS * (PAPER_TRAIN_IMAGES / train["images_per_s"] + PAPER_VAL_IMAGES / val["images_per_s"])
    return {"epochs": PAPER_EPOCHS, "train_images": PAPER_TRAIN_IMAGES, "val_images": PAPER_VAL_IMAGES,
            "train_images_per_s": train["images_per_s"], "val_images_per_s": val["images_per_s"],
            "hours": seconds / 3600}


def write_report(out_dir, info, tests, failed, rows, proj, cuda, bench_error=None):
    lines = [f"# GPU check: {info['device_name']}", "",
             f"Commit `{info['commit']}`, {info['date']}; torch {info['torch']}, CUDA {info['cuda'] or 'none'}, "
             f"python {info['python']}; {info['minutes']:.1f} minutes.", ""]
    if not cuda:
        lines += ["**No CUDA device: the CUDA tests were skipped and the benchmark below ran on the CPU.** "
                  "Run `python gpu_check.py` on a machine with a GPU for the real report.", ""]
    lines += [f"CUDA tests (`tests/test_cuda.py`): {tests['passed']} passed, {tests['failed']} failed, "
              f"{tests['skipped']} skipped." + (f" Failed: {', '.join(failed)}." if failed else ""), "",
              f"`--sync_bn` on 2 GPUs against one (`{SYNC_BN_TEST}`): {tests.get('sync_bn', 'not run')}.", ""]
    if bench_error:
        lines += [f"The benchmark failed: {bench_error}.", ""]
    cols = [("device", "device"), ("what", "what"), ("operator", "operator"), ("variant", "variant"), ("size", "px"),
            ("batch", "batch"), ("workers", "workers"), ("images_per_s", "images/s"), ("peak_mem_mb", "peak MiB"),
            ("sys_pct", "sys %")]
    lines += ["```", format_table(rows, cols), "```", ""]
    lines += [f"- **Not consistent:** {w}." for w in inconsistencies(rows)]
    loader = find(rows, LOADER_ONLY, variant="default", size=224)
    step = find(rows, MODEL_TRAIN_STEP, variant="contiguous", size=224, operator=NPR)
    train = find(rows, TRAIN_E2E, variant="default", size=224)
    if loader and train:
        lines += [f"- Training loader alone: {loader['images_per_s']:.0f} images/s with {loader['workers']} workers; "
                  f"end-to-end training {train['images_per_s']:.0f} images/s"
                  + (f", model step alone {step['images_per_s']:.0f} images/s" if step else "")
                  + (": the loader is the bottleneck." if step and loader["images_per_s"] < step["images_per_s"]
                     else ": the model is the bottleneck.")]
    if proj:
        lines += [f"- Projected wall time of the paper's recipe ({proj['epochs']} epochs of {proj['train_images']:,} "
                  f"ProGAN 4-class images plus {proj['val_images']} validation images each) on this "
                  f"{'GPU' if cuda else 'CPU'}: **{proj['hours']:.1f} hours** at {proj['train_images_per_s']:.0f} "
                  f"training and {proj['val_images_per_s']:.0f} evaluation images/s (generated 256 px PNGs; real "
                  "ones decode at a similar cost, a slow disk adds to it)."]
    text = "\n".join(lines) + "\n"
    with atomic_file(os.path.join(out_dir, "report.md")) as f:
        f.write(text)
    write_json_atomically({"info": info, "tests": tests, "failed": failed, "results": rows, "projection": proj},
                          os.path.join(out_dir, "report.json"))
    return text


def get_args_parser():
    p = OneLineErrorParser("Run the CUDA tests and a short CUDA benchmark, and write one report.")
    p.add_argument("--output", default="results/gpu_check", help="folder for report.md and report.json")
    p.add_argument("--batch_size", type=int, default=64, help="evaluation batch (training uses half, as bench.py)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per model-only measurement")
    p.add_argument("--skip_tests", action="store_true", help="only the benchmark")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    start = time.time()
    check_output(args.output, "--output", folder=True)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    info = {"commit": commit.stdout.strip() or "unknown", "date": time.strftime("%Y-%m-%d"),
            "device_name": torch.cuda.get_device_name(0) if cuda else f"no GPU ({platform.processor() or 'CPU'}, "
                                                                     f"{os.cpu_count()} cores)",
            "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "python": platform.python_version()}
    print("[1/3] CUDA tests ...", flush=True)
    tests, failed, outcomes = ({"passed": 0, "failed": 0, "skipped": 0}, [], {}) if args.skip_tests else \
        run_cuda_tests(args.output)
    tests["sync_bn"] = outcomes.get(SYNC_BN_TEST, "not run")
    print(f"[2/3] benchmark on {device.type} ...", flush=True)
    rows, bench_error = run_bench(device, args.output, args)
    print("[3/3] report ...", flush=True)
    info["minutes"] = (time.time() - start) / 60
    text = write_report(args.output, info, tests, failed, rows, projection(rows), cuda, bench_error)
    print(text)
    print(f"Wrote {os.path.join(args.output, 'report.md')} and report.json")
    return 1 if failed or bench_error else 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
