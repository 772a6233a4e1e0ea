"""``cmpt bench`` / ``python -m cmpt.bench``: cmpt's fast paths against straightforward references.

One process measures everything and prints one line per figure, each a ratio against a
baseline measured in the same run on the same data (:mod:`cmpt.perf` holds the measuring):

1. **prompt tuning**: images/s of one training step (prompt + head, frozen ViT) of cmpt's
   path (:func:`cmpt.train.train_step` on cached embedding tokens, fused attention, the CLS
   shortcut in the last block, the precision ``auto`` picks) against
   :class:`cmpt.perf.ReferencePromptTuner` (the same timm model with its plain attention
   path, fp32, the patch embedding recomputed from pixels every step, nothing cached);
2. **FLOP/s**: the step's counted FLOPs times its rate, as a share of this machine's matmul
   peak measured in the same run (in the precision the step computes in);
3. **head-only**: linear probing, the random reference and frozen transfer from every source
   of one target through :func:`cmpt.runner.run_target`, with cached CLS features against
   recomputing the backbone's forwards every epoch;
4. **MMD table**: :func:`cmpt.gaps.modality_gap_table` for all source x target pairs against
   :func:`cmpt.perf.direct_mmd_table`, Algorithm 1 written out pair by pair;
5. **memory** of a training step (CUDA: peak allocated above resident; CPU: the activations
   autograd keeps for the backward pass, the part of a step's memory that grows with the batch).

Data are random tensors of the profile's shapes (speed does not depend on the values).
``--ideas`` adds what was tried, kept or not: each switch off, bf16 autocast, one thread,
several prompts batched in one forward; ``--compile`` adds ``torch.compile``.

``--memory`` measures something else instead: whether a target run's memory grows with the
data. It writes a VTAB-style export folder of generated 224 px images for each test-split size
(``--memory-sizes``, default 1,000 and 30,000), runs one target run (tiny ViT, VPT or linear,
one epoch) on each in a fresh process, and prints each process's peak resident memory and the
ratio of the largest to the smallest (goal: at most 1.25). Sizes and settings are options, so a
test can run it small.

Settings live in :mod:`cmpt.bench_config`; this module stays light (no torch import) so that
the ``cmpt`` command starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cmpt.bench_config import FIGURES, MEMORY_SETTINGS, BenchConfig, MemoryConfig

__all__ = ["FIGURES", "BenchConfig", "BenchResult", "MemoryConfig", "MemoryResult", "add_arguments",
           "config_from_args", "main", "memory_config_from_args", "run_bench", "run_memory"]

def _sdpa(value: bool | None) -> str:
    return {None: "auto (fused on CUDA only)", True: "on", False: "off"}[value]


def _describe(info: Mapping[str, Any]) -> str:
    where = (f"cuda: {info['gpu']} ({info['gpu_memory_gib']} GiB, CUDA {info['cuda']})" if info["device"] == "cuda"
             else f"cpu: {info['cpu']}")
    auto = ""
    if info.get("auto_precision"):
        measured = (f" (a bf16-autocast step runs {info['cpu_bf16_speedup']:.2f}x fp32's here)"
                    if info.get("cpu_bf16_speedup") else "")
        auto = f"; runs at precision 'auto' use {info['auto_precision']}{measured}"
    return (f"{where}; {info['cores']} cores, {info['torch_threads']} torch threads; torch {info['torch']}, "
            f"python {info['python']}{auto}")


@dataclass
class BenchResult:
    """Everything one benchmark run measured; :meth:`lines` is the printed report."""

    config: dict[str, Any]
    machine: dict[str, Any]
    figures: dict[str, dict[str, Any]]
    ideas: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        """A header (machine, sizes), one line per figure, then any idea lines and the total time."""
        c, f = self.config, self.figures
        p, h, m = f["prompt_tuning"], f["head_only"], f["mmd"]
        gflop = {k: v / c["batch_size"] / 1e9 for k, v in p["flops_per_step"].items()}
        prec = p["precision"]
        mem = p["memory"]
        weights = " (random weights)" if c["random_weights"] else ""
        out = [
            f"device: {_describe(self.machine)}",
            f"sizes: {c['backbone']}{weights} at {c['image_size']} px, prompt {c['prompt_length']} ({c['layout']}), "
            f"batch {c['batch_size']}, {c['rounds']} rounds x {c['steps']} steps; cmpt path: sdpa={_sdpa(c['sdpa'])}, "
            f"cls_shortcut={c['cls_shortcut']}, cached tokens, precision {c['precision']} -> {prec}",
            f"{FIGURES[0]}: cmpt {p['images_per_s']['cmpt']:.1f} img/s vs reference "
            f"{p['images_per_s']['reference']:.1f} img/s -> {p['speedup']:.2f}x (parity: max |logit diff| "
            f"{p['parity']['max_abs_logit_diff']:.1e} in fp32, {p['parity']['max_abs_logit_diff_in_precision']:.1e} "
            f"in {prec})",
            f"{FIGURES[1]}: cmpt {p['achieved_flops']['cmpt'] / 1e9:.1f} GFLOP/s ({gflop['cmpt']:.3f} GFLOP/img) = "
            f"{100 * p['peak_fraction']['cmpt']:.0f}% of the measured {prec} matmul peak "
            f"{p['matmul_peak'][prec] / 1e9:.1f} GFLOP/s; reference {p['achieved_flops']['reference'] / 1e9:.1f} "
            f"GFLOP/s ({gflop['reference']:.3f} GFLOP/img) = {100 * p['peak_fraction']['reference']:.0f}% of the "
            f"fp32 peak {p['matmul_peak']['fp32'] / 1e9:.1f}",
            f"{FIGURES[2]} ({h['runs']} runs of one target: linear, random, frozen x {h['runs'] - 2} sources; "
            f"{h['epochs']} epochs): cached features {h['cached_s']:.2f} s vs recomputing {h['recompute_s']:.1f} s -> "
            f"{h['speedup']:.1f}x (recomputing: 1 and 3 epochs of one run timed, extrapolated; parity: the 3-epoch "
            f"loss curves differ by at most {h['parity_max_loss_diff']:.1e})",
            f"{FIGURES[3]} ({m['pairs']} pairs, {m['tokens_per_target']} tokens per target, {c['mmd_passes']} "
            f"passes): cmpt {m['cmpt_s']:.3f} s vs direct {m['direct_s']:.3f} s -> {m['speedup']:.1f}x "
            f"(max relative difference {m['max_rel_diff']:.1e})",
            f"{FIGURES[4]} ({mem['cmpt']['what']}): cmpt {mem['cmpt']['bytes'] / 2 ** 20:.1f} MiB vs reference "
            f"{mem['reference']['bytes'] / 2 ** 20:.1f} MiB -> "
            f"{mem['cmpt']['bytes'] / max(1, mem['reference']['bytes']):.2f}x",
        ]
        rates = self.ideas.get("images_per_s", {})
        once = set(self.ideas.get("timed_once", ()))
        out += [f"idea: {name}: {rate:.1f} img/s ({rate / rates['fp32']:.2f}x cmpt's fp32 step)"
                + (" (one step timed: too slow to repeat)" if name in once else "")
                for name, rate in rates.items() if name != "fp32"]
        out += [f"idea: {name}: not timed ({base} was too slow to repeat)"
                for name, base in self.ideas.get("not_timed", {}).items()]
        if "compile" in self.ideas:
            comp = self.ideas["compile"]
            out.append(f"idea: torch.compile: first step {comp['compile_s']:.1f} s, then {comp['compiled']:.1f} img/s "
                       f"vs eager {comp['eager']:.1f} img/s ({comp['compiled'] / comp['eager']:.2f}x)")
        out.append(f"total {self.seconds:.0f} s")
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, default=float)

    @classmethod
    def from_json(cls, text: str) -> "BenchResult":
        return cls(**json.loads(text))


#: the peak-memory ratio (largest test split / smallest) the streaming design aims to stay under
MEMORY_GOAL = 1.25


@dataclass
class MemoryResult:
    """Peak resident memory of one target run per test-split size; :meth:`lines` is the report."""

    config: dict[str, Any]
    runs: list[dict[str, Any]]
    seconds: float = 0.0

    @property
    def ratio(self) -> float:
        """Peak memory at the largest test split over the peak at the smallest."""
        by_size = sorted(self.runs, key=lambda r: r["n_test"])
        return by_size[-1]["peak_rss_bytes"] / by_size[0]["peak_rss_bytes"]

    def lines(self) -> list[str]:
        c = self.config
        out = [f"memory: one {c['setting']} run of {c['backbone']} at {c['image_size']} px ({c['n_train']} train, "
               f"{c['n_val']} val, {c['epochs']} epoch{'s' if c['epochs'] != 1 else ''}, batches of {c['batch_size']}) "
               f"per test-split size, each in a fresh process; cache budget {c['cache_mib']} MiB, "
               f"{c['workers']} loader workers, device {c['device']}"]
        for run in sorted(self.runs, key=lambda r: r["n_test"]):
            test = "cached" if "test" in run["cached"] else "streamed"
            out.append(f"memory: n_test={run['n_test']:,}: peak RSS {run['peak_rss_bytes'] / 2**20:.1f} MiB "
                       f"(after loading the backbone {run['start_rss_bytes'] / 2**20:.1f} MiB; test split {test}; "
                       f"test acc {run['test_acc']:.3f}; {run['seconds']:.0f} s)")
        small, large = min(r["n_test"] for r in self.runs), max(r["n_test"] for r in self.runs)
        out.append(f"memory: peak ratio n_test={large:,} / n_test={small:,}: {self.ratio:.3f} (goal <= {MEMORY_GOAL})")
        out.append(f"total {self.seconds:.0f} s")
        return out

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ratio": self.ratio}, indent=1, default=float)


def run_memory(mc: MemoryConfig) -> MemoryResult:
    """Measure the peak memory of one target run at each of ``mc.sizes`` (see :mod:`cmpt.perf`)."""
    import time

    from cmpt.perf import memory_growth

    start = time.perf_counter()
    runs = memory_growth(mc)
    return MemoryResult(config=asdict(mc), runs=runs, seconds=time.perf_counter() - start)


def run_bench(bc: BenchConfig) -> BenchResult:
    """Measure every figure for ``bc`` (imports torch and the backbone)."""
    import time

    from cmpt.perf import measure

    start = time.perf_counter()
    measured = measure(bc)
    return BenchResult(config=asdict(bc), seconds=time.perf_counter() - start, **measured)


# ----------------------------------------------------------------------------- command line

_SIZES = ("backbone", "image_size", "prompt_length", "batch_size", "steps", "rounds", "warmup", "n_train", "n_val",
          "n_test", "head_epochs", "sources", "mmd_targets", "mmd_passes", "threads", "precision")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cmpt bench`` (also those of ``python -m cmpt.bench``)."""
    parser.add_argument("--profile", default="default", help="take the sizes from this profile (default: default)")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (default: the profile's, i.e. auto)")
    parser.add_argument("--json", help="also write every measurement to this JSON file")
    kinds = {f.name: f.type for f in fields(BenchConfig)}
    for name in _SIZES:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, metavar="N" if kinds[name] == "int" else "NAME",
                            type=int if kinds[name] == "int" else str, help="(default: from the profile)")
    parser.add_argument("--sdpa", choices=("auto", "on", "off"), default="auto",
                        help="fused attention in cmpt's path (auto: on CUDA only)")
    parser.add_argument("--no-cls-shortcut", dest="cls_shortcut", action="store_false", default=None,
                        help="run the last block on every token in cmpt's path")
    parser.add_argument("--random-weights", action="store_true", default=None,
                        help="time a randomly initialised backbone (no weights to fetch)")
    parser.add_argument("--ideas", action="store_true", default=None,
                        help="also time each switch off, bf16, one thread, several prompts in one forward")
    parser.add_argument("--compile", action="store_true", default=None,
                        help="also time torch.compile (compile time and steady rate)")
    memory = parser.add_argument_group("memory growth (--memory)")
    memory.add_argument("--memory", action="store_true",
                        help="instead of the five figures: peak memory of one target run at each test-split size")
    memory.add_argument("--memory-sizes", nargs="+", type=int, metavar="N",
                        help="test-split sizes, one run each (default: 1000 30000)")
    memory.add_argument("--memory-setting", choices=MEMORY_SETTINGS, help="target setting (default: vpt)")
    for name, what in (("train", "training images (default: 800)"), ("val", "validation images (default: 200)"),
                       ("image-size", "image and backbone size in px (default: 224)"),
                       ("epochs", "epochs of the run (default: 1)"),
                       ("batch-size", "batch size of training and evaluation (default: 64)"),
                       ("cache-mib", "memory budget for cached tokens and features (default: 1024)"),
                       ("workers", "DataLoader workers decoding images (default: 0)")):
        memory.add_argument(f"--memory-{name}", type=int, metavar="N", help=what)


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    names = {f.name for f in fields(BenchConfig)} - {"profile", "sdpa"}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return BenchConfig.from_profile(args.profile, sdpa={"auto": None, "on": True, "off": False}[args.sdpa], **values)


def memory_config_from_args(args: argparse.Namespace) -> MemoryConfig:
    """The :class:`MemoryConfig` of ``--memory-*`` options (``--device`` and ``--threads`` apply too)."""
    names = {"sizes": "memory_sizes", "setting": "memory_setting", "n_train": "memory_train", "n_val": "memory_val",
             "image_size": "memory_image_size", "epochs": "memory_epochs", "batch_size": "memory_batch_size", "cache_mib": "memory_cache_mib",
             "workers": "memory_workers", "device": "device", "threads": "threads"}
    values = {field_name: getattr(args, arg) for field_name, arg in names.items() if getattr(args, arg, None) is not None}
    if "sizes" in values:
        values["sizes"] = tuple(values["sizes"])
    return MemoryConfig(**values)


def last_build_line(records: str | Path = "_build/records/performance.json") -> str | None:
    """A line on the last book build's compute efficiency and precision, from its performance chapter's records."""
    try:
        values = json.loads(Path(records).read_text())
        accounting, precision = values["performance/accounting"], values.get("performance/precision", "?")
        return (f"last book build ({records}): {accounting['efficiency']:.0%} of its "
                f"{accounting['wall_s'] / 60:.1f} min accounted for was spent in training and evaluation loops; "
                f"its runs computed in {precision}")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_from_args(args: argparse.Namespace) -> int:
    if getattr(args, "memory", False):
        result: Any = run_memory(memory_config_from_args(args))
    else:
        result = run_bench(config_from_args(args))
    for line in result.lines():
        print(line, flush=True)
    if not getattr(args, "memory", False) and (line := last_build_line()):
        print(line, flush=True)
    if args.json:
        Path(args.json).write_text(result.to_json())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmpt.bench",
                                     description="Benchmark cmpt's fast paths against straightforward references.")
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
