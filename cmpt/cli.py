"""Command line: ``cmpt book``, ``cmpt profiles`` (also ``python -m cmpt``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmpt.profiles import PROFILES, ProfileError, parse_value

__all__ = ["main"]


def _book(args: argparse.Namespace) -> int:
    from cmpt.book import BookError, build_book, find_root

    overrides = {}
    for name, value in args.param:
        if name in overrides:
            raise ProfileError(f"parameter {name!r} given twice")
        overrides[name] = parse_value(value)
    root = find_root(Path(args.root) if args.root else None)
    out = Path(args.out) if args.out else root
    try:
        build_book(root, out.resolve(), profile=args.profile, overrides=overrides, only=args.only or None,
                   html=not args.no_html)
    except BookError as err:
        print(f"cmpt book: {err}", file=sys.stderr)
        return 1
    return 0


def _profiles(args: argparse.Namespace) -> int:
    for profile in PROFILES.values():
        print(f"{profile.name}: {profile.description}")
        if args.verbose:
            for key, value in profile.as_dict().items():
                print(f"    {key} = {value!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmpt", description="Cross-Modality Prompt Transfer: the book and its runs")
    sub = parser.add_subparsers(dest="command", required=True)

    book = sub.add_parser("book", help="execute every chapter with papermill, then build the HTML book")
    book.add_argument("--profile", default="default", help=f"one of: {', '.join(PROFILES)} (default: default)")
    book.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                      help="override a profile field or chapter parameter in every notebook (repeatable)")
    book.add_argument("--only", action="append", metavar="CHAPTER", help="execute only this chapter (repeatable)")
    book.add_argument("--out", help="output folder; the HTML lands in OUT/_build/html (default: the project root)")
    book.add_argument("--root", help="project root holding _toc.yml (default: found from the current folder)")
    book.add_argument("--no-html", action="store_true", help="execute the chapters but skip the HTML build")
    book.set_defaults(func=_book)

    profiles = sub.add_parser("profiles", help="list the run profiles")
    profiles.add_argument("-v", "--verbose", action="store_true", help="print every field")
    profiles.set_defaults(func=_profiles)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ProfileError as err:
        print(f"cmpt: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
