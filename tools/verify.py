"""Check a benchmark copy before trusting its numbers (the checks: ``data.verification``).

    python -m tools.verify --dataroot ./datasets [--suites ForenSynths,GenImage] [--json report.json]
    python test.py --dataroot ./datasets --check_data          # the same, before evaluating
"""
import sys

from data.verification import format_report, verify
from options.base_options import non_negative_int
from files import check_output, write_json_atomically
from util import OneLineErrorParser, run_cli, UserError


def get_args_parser():
    p = OneLineErrorParser("Check the benchmark copy under --dataroot: counts against the published ones, broken "
                           "and duplicate files, and format bias between real and fake.")
    p.add_argument("--dataroot", required=True, help="folder holding the suite folders (as for test.py)")
    p.add_argument("--suites", default="", help="comma-separated suites to check (empty: every suite found)")
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument("--num_threads", type=non_negative_int, default=None,
                   help="processes reading files (default: one per CPU)")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    suites = tuple(s.strip() for s in args.suites.split(",") if s.strip())
    if args.json:  # checked before the files are read: a wrong --json would lose the whole check
        check_output(args.json, "--json")
    report = verify(args.dataroot, suites, args.num_threads)
    if not report["suites"]:
        raise UserError(f"no suite found under '{args.dataroot}'")
    print(format_report(report))
    if args.json:
        write_json_atomically(report, args.json)
        print(f"Report written to {args.json}")
    return 0


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
