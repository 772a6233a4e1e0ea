"""Command line: ``cmpt book``, ``cmpt sweep``, ``cmpt bench``, ``cmpt profiles`` (also ``python -m cmpt``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cmpt.errors import CmptError, InputError, check_names
from cmpt.profiles import PROFILES, Profile, ProfileError, get_profile, parse_value

__all__ = ["main"]


def _book(args: argparse.Namespace) -> int:
    """Execute and build; a failed build says what failed in a few lines (the first names the problem)."""
    from cmpt.book import BookError, build_book, find_root, parse_parameter

    root = find_root(Path(args.root) if args.root else None)
    overrides = {}
    for name, value in args.param:
        if name in overrides:
            raise ProfileError(f"parameter {name!r} given twice")
        overrides[name] = parse_parameter(name, value, root)  # a malformed value says what is malformed
    out = Path(args.out) if args.out else root
    try:
        build_book(root, out.resolve(), profile=args.profile, overrides=overrides, only=args.only or None,
                   html=not args.no_html)
    except BookError as err:  # kept on several lines: a page, a cell and the log's path each on its own
        lines = [line.rstrip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        print(f"cmpt book: {lines[0]}", *lines[1:], sep="\n", file=sys.stderr)
        return err.exit_code
    return 0


class _BookHelp(argparse.Action):
    """``cmpt book --help``: the options, then every chapter's own parameters and the profile fields."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS,
                         help="show this help, with every chapter's parameters, and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from cmpt.book import find_root, parameters_help

        try:
            parser.epilog = parameters_help(find_root())
        except CmptError as err:
            parser.epilog = f"(chapters not listed: {err})"
        parser.print_help()
        parser.exit()


def _profiles(args: argparse.Namespace) -> int:
    for profile in PROFILES.values():
        print(f"{profile.name}: {profile.description}")
        if args.verbose:
            for key, value in profile.as_dict().items():
                print(f"    {key} = {value!r}")
    return 0


#: test images per target the plan assumes at most: the mean VTAB-1k test split is of this order
ASSUMED_TEST_IMAGES = 20_000


def _profile_from(args: argparse.Namespace) -> Profile:
    names = [name for name, _ in args.param]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ProfileError(f"parameter(s) {', '.join(twice)} given twice")
    return get_profile(args.profile, {name: parse_value(value) for name, value in args.param})


def _grid(args: argparse.Namespace, profile: Profile) -> tuple[list[str], list[str], list[str]]:
    """The settings, targets and sources asked for, every name checked before any work starts."""
    from cmpt.data import IMAGE_TASKS, VTAB_TASKS
    from cmpt.experiments import bank_width, vision_width
    from cmpt.settings import REGISTRY
    from cmpt.settings import accepts_width

    settings = args.settings or list(REGISTRY)
    check_names("setting", settings, REGISTRY)
    targets = args.targets or list(profile.image_tasks)
    check_names("target task", targets, sorted(set(profile.image_tasks) | set(IMAGE_TASKS) | set(VTAB_TASKS)))
    sources = args.sources or list(profile.text_tasks)
    check_names("source", sources, profile.text_tasks,
                hint=f"the source bank of profile {profile.name}; add tasks with -p text_tasks")
    prompt_width, target_width = bank_width(profile), vision_width(profile)
    narrow = [s for s in settings if not accepts_width(s, prompt_width, target_width)]
    if narrow and args.settings:
        raise InputError(f"{' and '.join(narrow)} transfer inserts the source prompts as they are, but they are "
                         f"{prompt_width} wide and {profile.vision_backbone} is {target_width}; use projection or "
                         "attention transfer, which map widths")
    if narrow:
        print(f"cmpt sweep: leaving out {', '.join(narrow)}: the source prompts are {prompt_width} wide, "
              f"{profile.vision_backbone} {target_width}", file=sys.stderr)
        settings = [s for s in settings if s not in narrow]
    return settings, targets, sources


def _sweep(args: argparse.Namespace) -> int:
    """The target grid (settings x targets x sources x seeds) through the results store, resumable."""
    from cmpt.experiments import source_bank
    from cmpt.protocol import PROTOCOL_LABELS, plan_table, run_protocol
    from cmpt.results import ResultsStore
    from cmpt.run_config import setting_grid
    from cmpt.sweep import require_ray
    from cmpt.settings import get_setting

    profile = _profile_from(args)
    settings, targets, sources = _grid(args, profile)
    configs = setting_grid(profile, settings, targets, sources, args.seeds)
    if args.plan:
        test_images = min(profile.n_test, ASSUMED_TEST_IMAGES)
        table = plan_table(profile, configs, test_images=test_images)
        print(f"cmpt sweep --plan, profile {profile.name}: {PROTOCOL_LABELS[profile.protocol]}; "
              f"test splits counted as {test_images:,} images each")
        print(table.to_string(float_format=lambda v: f"{v:,.1f}"))
        total = table.drop(columns="GPU hours").to_numpy().sum()
        print(f"total: {total:,} runs, {table['GPU hours'].sum():,.1f} GPU hours (an A100 at an assumed 40% "
              f"of its 312 TFLOP/s BF16 peak; see the performance chapter)")
        return 0
    if args.executor == "ray":
        require_ray(args.address)  # fail before training anything if Ray is missing
    store = ResultsStore.for_profile(profile, root=args.results)
    # the source bank (and the random prompts' reference norm) come first, trained here if missing
    needs_bank = any(get_setting(s).takes_source or s == "random" for s in settings)
    bank = source_bank(profile, store=store) if needs_bank else {}
    table = run_protocol(profile, configs, prompts=bank, desc=f"{profile.name} grid", store=store,
                         executor=args.executor, retries=args.retries, on_error="continue",
                         address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    report, calibration = table.attrs["sweep"], table.attrs.get("calibration")
    if calibration:
        print(f"cmpt sweep: rates chosen on validation first: {calibration['total']} calibration runs: "
              f"{calibration['ran']} ran, {calibration['skipped']} already done, {len(calibration['failed'])} failed")
    print(f"cmpt sweep: {report['total']} runs: {report['ran']} ran, {report['skipped']} already done, "
          f"{len(report['failed'])} failed; results in {store.root}")
    return 1 if report["failed"] or (calibration and calibration["failed"]) else 0


def _bench(args: argparse.Namespace) -> int:
    from cmpt.bench import run_from_args

    return run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmpt", description="Cross-Modality Prompt Transfer: the book and its runs")
    sub = parser.add_subparsers(dest="command", required=True)

    book = sub.add_parser("book", help="execute every chapter with papermill, then build the HTML book",
                          add_help=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    book.add_argument("-h", "--help", action=_BookHelp)
    book.add_argument("--profile", default="default", help=f"one of: {', '.join(PROFILES)} (default: default)")
    book.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                      help="override a profile field or chapter parameter in every notebook (repeatable)")
    book.add_argument("--only", action="append", metavar="CHAPTER",
                      help="execute only this chapter (repeatable); the others keep their last executed page, "
                           "or get a page saying how to build them")
    book.add_argument("--out", help="output folder: the HTML lands in OUT/_build/html, the executed notebooks in "
                                    "OUT/_build/executed, the runs in OUT/_build/results (default: the project root)")
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
    grid.add_argument("--plan", action="store_true",
                      help="run nothing: print the search and final runs per setting and the projected GPU hours")
    grid.set_defaults(func=_sweep)

    from cmpt.bench import add_arguments as bench_arguments

    bench = sub.add_parser("bench", help="benchmark the fast paths against straightforward references (one process)")
    bench_arguments(bench)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a problem cmpt diagnosed is one line on stderr (exit 2 for bad input, else 1)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CmptError as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"cmpt {args.command}: {message}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"cmpt {args.command}: interrupted; finished runs are kept, run the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
