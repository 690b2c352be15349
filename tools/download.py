"""Fetch the paper's benchmark and weights (the sources in ``data/benchmarks.py``), on purpose only.

    python -m tools.download --list
    python -m tools.download --root ./datasets ForenSynths GANGen-Detection DiffusionForensics
    python -m tools.download --root ./datasets all         # every scripted source
    python -m tools.download weights                       # NPR.pth, to --weights_path
    python -m tools.download safe-weights                  # SAFE's checkpoint, beside it

The work is ``data.download``'s. Google Drive sources need ``pip install gdown``.
"""
import sys

from data.benchmarks import SOURCES, source_by_name
from data.download import download, list_sources
from util import OneLineErrorParser, UserError, run_cli, setup_logging


def get_args_parser():
    p = OneLineErrorParser("Download the paper's benchmark suites and weights, check them and extract them where "
                           "test.py finds them.")
    p.add_argument("names", nargs="*", help="sources (see --list), 'all' for every scripted one, 'weights' for NPR.pth")
    p.add_argument("--root", default="./datasets", help="where the suites go (test.py --dataroot)")
    p.add_argument("--weights_path", default="NPR.pth",
                   help="where 'weights' writes NPR.pth (a folder: NPR.pth in it; other weights go beside it)")
    p.add_argument("--keep_archives", action="store_true", help="keep the archives after extraction")
    p.add_argument("--list", action="store_true", help="list the sources and exit")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    setup_logging()
    if args.list or not args.names:
        print(list_sources())
        return 0
    names = [s.name for s in SOURCES if s.kind != "manual" and s.suite] if args.names == ["all"] else args.names
    unknown = [n for n in names if source_by_name(n) is None]
    if unknown:
        raise UserError(f"unknown source '{unknown[0]}'; known: {', '.join(x.name for x in SOURCES)}, or all")
    for source in map(source_by_name, names):
        print(f"{source.name}: ready in {download(source, args.root, args.keep_archives, args.weights_path)}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
