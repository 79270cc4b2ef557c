"""Command line: python -m scoft_train <verb> ... (train, sample, compare, negatives, bench, demo,
biaslab, sfsl, rscorrector)."""

from __future__ import annotations

import argparse
import logging

from ..atomic import DiskFullError
from ..quiet import quiet_third_party
from . import bench, biaslab, demo, negatives, rscorrector, sfsl, train

log = logging.getLogger("scoft_train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scoft_train", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and every third-party library's messages and progress bars")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for family in (train, negatives, bench, demo, biaslab, sfsl, rscorrector):
        family.register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        quiet_third_party()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, DiskFullError) as error:
        log.error("%s", error)
        return 2

