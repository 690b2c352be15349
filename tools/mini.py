"""Build the NPR-mini benchmark by hand (train.py and test.py build it on first use).

    python -m tools.mini [--root datasets/npr-mini] [--rebuild]

The builder is ``data.mini.build_mini``; this is its command line.
"""
import sys

from data.benchmarks import MINI_ROOT
from data.mini import build_mini
from devices import keep_freed_memory
from util import OneLineErrorParser, run_cli, setup_logging


def get_args_parser():
    p = OneLineErrorParser("Build the NPR-mini benchmark (train.py and test.py build it on first use).")
    p.add_argument("--root", default=MINI_ROOT, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--rebuild", action="store_true", help="rebuild even when a complete build exists")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    keep_freed_memory()
    setup_logging()
    m = build_mini(args.root, seed=args.seed, rebuild=args.rebuild)
    print(f"NPR-mini at {args.root}: {m['counts_per_class']}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
