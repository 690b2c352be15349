"""Each script's options: --help shows what the script uses, the reference's commands still
run, one type per flag; and the README stays a front door whose links resolve."""
import importlib
import re
import subprocess

import pytest
from conftest import EXTRA_INSTALL, EXTRA_PACKAGES, missing_extra, ROOT, run_script

import options
from options import parse_train_args, predict_parser, train_parser, validate_parser
from options.base_options import REFERENCE_OPTIONS
from util import UserError


TRAINING_ONLY = ("blur_prob", "blur_sig", "jpg_prob", "jpg_method", "jpg_qual", "rz_interp", "delr_freq", "class_bal",
                 "serial_batches", "no_flip", "name", "epoch", "checkpoints_dir", "niter", "lr", "beta1", "optim",
                 "earlystop_epoch", "loss_freq", "save_latest_freq", "save_epoch_freq", "continue_train", "new_optim",
                 "train_split", "val_split", "seed", "rotate", "color_jitter", "mask_prob", "ema", "cache_dir")


NO_OPS = ("mode", "arch", "resize_or_crop", "init_type", "init_gain", "suffix", "data_aug", "epoch_count", "last_epoch",
          "eval")


def shown(parser):
    """The flags --help lists (the usage line names every option that is not suppressed)."""
    return set(re.findall(r"--([A-Za-z_0-9]+)", parser.format_usage()))


def test_evaluation_help_lists_no_training_flag_and_no_flag_lists_a_no_op():
    for parser in (options.test_parser(), validate_parser(), predict_parser()):
        assert not shown(parser) & set(TRAINING_ONLY), shown(parser) & set(TRAINING_ONLY)
    for parser in (train_parser(), options.test_parser(), validate_parser(), predict_parser()):
        assert not shown(parser) & set(NO_OPS)
    assert {"blur_prob", "niter", "ema", "rotate"} <= shown(train_parser())


def test_the_references_commands_and_options_are_accepted():
    args = parse_train_args(["--name", "4class-resnet-car-cat-chair-horse", "--dataroot", "x", "--classes",
                             "car,cat,chair,horse", "--batch_size", "32", "--delr_freq", "10", "--lr", "0.0002",
                             "--niter", "50", "--mode", "binary", "--arch", "res50", "--init_type", "normal",
                             "--data_aug", "--epoch_count", "1", "--suffix", "", "--resize_or_crop", "none"])
    assert (args.batch_size, args.lr, args.niter, args.classes) == (32, 0.0002, 50, ("car", "cat", "chair", "horse"))
    assert not any(hasattr(args, k) for k in NO_OPS)
    values = {"loadSize": "256", "cropSize": "224", "batch_size": "64", "gpu_ids": "-1", "num_threads": "0"}
    reference_test_flags = []  # every reference option, as its test.py accepts them
    for name, takes_value in REFERENCE_OPTIONS.items():
        if name in ("dataroot", "model_path"):
            continue
        reference_test_flags += [f"--{name}"] + ([values.get(name, "1")] if takes_value else [])
    args = options.test_parser().parse_args(["--model_path", "NPR.pth", "--dataroot", "x"] + reference_test_flags)
    assert args.model_path == ["NPR.pth"] and not hasattr(args, "blur_prob") and not hasattr(args, "niter")


def test_one_type_per_flag():
    assert parse_train_args(["--ema", "0.9", "--dataroot", "x"]).ema == 0.9
    for parser in (options.test_parser(), validate_parser(), predict_parser()):
        assert "ema_weights" in shown(parser) and "ema" not in shown(parser)
    with pytest.raises(UserError, match="--blur_sig"):
        parse_train_args(["--blur_sig", "1,2,3"])


@pytest.mark.parametrize("parser", [train_parser, options.test_parser, validate_parser, predict_parser])
def test_no_numeric_option_takes_nan_or_inf(parser):
    """nan passes every range check (nan < 0 and nan > 1 are both False): a --threshold nan
    called every image real."""
    p = parser()
    must = {train_parser: ["--dataroot", "x"], validate_parser: ["--dataroot", "x"], predict_parser: ["x"]}.get(parser, [])
    numeric = [a for a in p._actions if a.option_strings and getattr(a.type, "__name__", "") not in ("", "str", "GPU ids",
               "list", "shard", "comma_list", "output")]
    assert len(numeric) >= 3
    for action in numeric:
        for bad in ("nan", "inf", "-inf", "0,nan"):
            with pytest.raises(UserError):
                p.parse_args(must + [action.option_strings[0], bad])


@pytest.mark.parametrize("parser", [train_parser, options.test_parser, validate_parser, predict_parser,
                                    lambda: importlib.import_module("demo").get_args_parser()])
def test_gpu_ids_that_are_not_ids_are_refused_by_every_script(parser):
    p = parser()
    must = {train_parser: ["--dataroot", "x"], validate_parser: ["--dataroot", "x"], predict_parser: ["x"]}.get(parser, [])
    assert p.parse_args(must + ["--gpu_ids", "0,1"]).gpu_ids == "0,1"
    for bad in ("abc", "0,-1", "", "1.5"):
        with pytest.raises(UserError, match="--gpu_ids"):
            p.parse_args(must + ["--gpu_ids", bad])


@pytest.mark.slow  # a process of its own imports every script
def test_the_library_imports_no_script_and_the_scripts_no_tool():
    """The import graph, as Python loads it: the library (what notebooks and every script import)
    loads no script; train.py and test.py load nothing of tools/, the command-line layer."""
    probe = ("import sys, engine, metrics, networks, prediction_store, recipe, report, figures, util, data.benchmarks, "
             "data.cache, data.perturb, data.verification, data.mini; "
             "print(sorted(m for m in ('train', 'test', 'validate', 'predict', 'bench', 'demo', 'gpu_check') "
             "if m in sys.modules)); import train, test; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tools'))")
    r = run_script("-c", probe)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "[]"], r.stdout


PRODUCT_MODULES = [f[:-3].replace("/", ".").removesuffix(".__init__") for f in subprocess.run(
    ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split() if not f.startswith("tests/")]


@pytest.mark.parametrize("name", PRODUCT_MODULES)
def test_every_product_module_imports(name):
    """Every module of the product imports in process, so that the fast loop (-m "not slow") loads
    all of them, whatever the slow tests cover; one that needs the optional extra is skipped,
    naming it, where the extra is not installed."""
    assert {"train", "test", "predict", "networks", "data.images", "tools.download"} <= set(PRODUCT_MODULES)
    try:
        importlib.import_module(name)
    except ImportError as e:
        if (e.name or "").split(".")[0] not in EXTRA_PACKAGES:
            raise
        missing_extra(f"the optional extra is not installed ({e}; {name} needs it): {EXTRA_INSTALL}")


@pytest.mark.parametrize("parser", [train_parser, options.test_parser, validate_parser, predict_parser,
                                    lambda: importlib.import_module("demo").get_args_parser()])
def test_every_size_option_stays_within_the_decode_limit(parser):
    """--loadSize 60000 resized every image to 3.6 gigapixels: a MemoryError, or the kernel's OOM kill."""
    p = parser()
    must = {train_parser: ["--dataroot", "x"], validate_parser: ["--dataroot", "x"], predict_parser: ["x"]}.get(parser, [])
    sizes = [a for a in p._actions if getattr(a.type, "__name__", "") == "size"]
    assert sizes
    for action in sizes:
        assert getattr(p.parse_args(must + [action.option_strings[0], "9459"]), action.dest) == 9459
        for bad in ("9460", "60000", "1"):
            with pytest.raises(UserError, match="a side of 2 to 9459 pixels"):
                p.parse_args(must + [action.option_strings[0], bad])
