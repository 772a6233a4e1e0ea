"""Command line: ``cmpt book``, ``cmpt sweep``, ``cmpt bench``, ``cmpt profiles`` (also ``python -m cmpt``)."""

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


def _sweep(args: argparse.Namespace) -> int:
    """The target grid (settings x targets x sources x seeds) through the results store, resumable."""
    import os

    from cmpt.results import RESULTS_ENV
    from cmpt.experiments import SETTING_HPARAMS, results_store, setting_configs, source_bank, target_sweep
    from cmpt.profiles import get_profile
    from cmpt.sweep import SOURCE_SETTINGS, SweepError, require_ray

    names = [name for name, _ in args.param]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ProfileError(f"parameter(s) {', '.join(twice)} given twice")
    cfg = get_profile(args.profile, {name: parse_value(value) for name, value in args.param})
    settings = args.settings or list(SETTING_HPARAMS)
    unknown = [s for s in settings if s not in SETTING_HPARAMS]
    if unknown:
        print(f"cmpt sweep: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(SETTING_HPARAMS)}",
              file=sys.stderr)
        return 2
    if args.results:
        os.environ[RESULTS_ENV] = str(Path(args.results).resolve())
    try:
        if args.executor == "ray":
            require_ray(args.address)  # fail before training anything if Ray is missing
        # the source bank (and the random prompts' reference norm) come first, trained here if missing
        bank = source_bank(cfg) if any(s in SOURCE_SETTINGS or s == "random" for s in settings) else {}
        sources = args.sources or list(bank)
        strangers = [s for s in sources if s not in bank]
        if strangers:
            print(f"cmpt sweep: source(s) {', '.join(strangers)} are not in the bank of profile {cfg.name} "
                  f"({', '.join(bank) or 'no source setting asked for'}); add them with -p text_tasks", file=sys.stderr)
            return 2
        configs = [c for s in settings
                   for c in setting_configs(cfg, s, args.targets or cfg.image_tasks,
                                            sources if s in SOURCE_SETTINGS else (None,), args.seeds)]
        table = target_sweep(cfg, configs, prompts=bank, desc=f"{cfg.name} grid", executor=args.executor,
                             retries=args.retries, on_error="continue", address=args.address,
                             num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    except SweepError as err:
        print(f"cmpt sweep: {err}", file=sys.stderr)
        return 1
    report = table.attrs["sweep"]
    print(f"cmpt sweep: {report['total']} runs: {report['ran']} ran, {report['skipped']} already done, "
          f"{len(report['failed'])} failed; results in {results_store(cfg).root}")
    return 1 if report["failed"] else 0


def _bench(args: argparse.Namespace) -> int:
    from cmpt.bench import run_from_args

    return run_from_args(args)


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

    grid = sub.add_parser("sweep", help="run the target grid (resumable) in this process or on a Ray cluster")
    grid.add_argument("--profile", default="default", help=f"one of: {', '.join(PROFILES)} (default: default)")
    grid.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                      help="override a profile field (repeatable)")
    grid.add_argument("--settings", nargs="+", metavar="SETTING", help="settings to run (default: all)")
    grid.add_argument("--targets", nargs="+", metavar="TASK", help="image tasks (default: the profile's)")
    grid.add_argument("--sources", nargs="+", metavar="TASK", help="source prompts (default: the profile's bank)")
    grid.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="seeds (default: the profile's)")
    grid.add_argument("--executor", choices=("local", "ray"), default="local",
                      help="local: in this process (default); ray: one Ray task per run")
    grid.add_argument("--address", help="Ray head HOST:PORT, or 'auto' for the cluster `ray start` began on this "
                                        "machine (default: a private Ray on 127.0.0.1)")
    grid.add_argument("--results", metavar="DIR",
                      help="results root, on a filesystem every worker sees; the store is DIR/PROFILE "
                           "(default: $CMPT_RESULTS, else the cmpt cache's results/)")
    grid.add_argument("--retries", type=int, default=1, help="tries after a failed or lost run (default: 1)")
    grid.add_argument("--num-cpus", type=float, default=1, help="CPUs per Ray task (default: 1)")
    grid.add_argument("--num-gpus", type=float, default=0, help="GPUs per Ray task (default: 0)")
    grid.set_defaults(func=_sweep)

    from cmpt.bench import add_arguments as bench_arguments

    bench = sub.add_parser("bench", help="benchmark the fast paths against straightforward references (one process)")
    bench_arguments(bench)
    bench.set_defaults(func=_bench)
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
