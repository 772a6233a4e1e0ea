"""The fast paths against the plain reference: parity within a tolerance, and each switch turns its speed-up off.

Tiny random models only (tiny-vit); the timing itself is the benchmark's job, not a test's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cmpt.backbones import load_vision_backbone, record_attention
from cmpt.backbones.vision import cls_row_block, supports_cls_shortcut
from cmpt.bench import FIGURES, BenchConfig, BenchResult
from cmpt.gaps.mmd import modality_gap_table
from cmpt.cost import vit_image_flops
from cmpt.perf import ReferencePromptTuner, direct_mmd_table, step_flops
from cmpt.profiles import DEFAULT
from cmpt.train import TrainConfig, evaluate, fit, make_optimizer, resolve_precision, train_step
from cmpt.transfer import LearnedPrompt, PromptedClassifier

ROOT = Path(__file__).resolve().parents[1]
LENGTH, CLASSES = 4, 3


@pytest.fixture()
def vit():
    return load_vision_backbone("tiny-vit", 32)


def _images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _pair(vit, layout: str = "before_cls"):
    """cmpt's classifier and the reference with the same prompt and head."""
    vit.layout = layout
    torch.manual_seed(0)
    fast = PromptedClassifier(vit, LearnedPrompt(LENGTH, vit.width, 8), CLASSES, head_init="default")  # gradients at step 1
    ref = ReferencePromptTuner(vit.vit, fast.prompt_source.prompt, CLASSES, layout)
    ref.head.load_state_dict(fast.head.state_dict())
    return fast, ref


def _grads(model, inputs, labels):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs), labels).backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("layout", ["before_cls", "after_cls"])
def test_fast_logits_and_gradients_match_the_plain_reference(vit, layout):
    fast, ref = _pair(vit, layout)
    images = _images()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    tokens = vit.embed(images).detach()
    assert vit.sdpa is None and vit.cls_shortcut  # the defaults: kernel chosen per device, shortcut on
    assert not any(b.attn.fused_attn for b in ref.vit.blocks)
    for sdpa in (None, True):
        vit.set_sdpa(sdpa)
        torch.testing.assert_close(fast(tokens), ref(images), rtol=1e-5, atol=1e-5)
        for g_fast, g_ref in zip(_grads(fast, tokens, labels), _grads(ref, images, labels)):
            torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-6)


def test_cls_row_block_equals_the_full_block_row(vit):
    x = torch.randn(5, 9, vit.width)
    block = vit.vit.blocks[-1]
    for index in (0, 4, 8):
        torch.testing.assert_close(cls_row_block(block, x, index), block(x)[:, index], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["none", "shallow", "deep", "per_example"])
def test_cls_shortcut_is_exact_for_every_prompt_kind(vit, kind):
    images = _images(3)
    kwargs = {"none": {}, "shallow": {"prompt": torch.randn(LENGTH, vit.width)},
              "deep": {"deep_prompts": torch.randn(vit.depth, LENGTH, vit.width)},
              "per_example": {"prompt": torch.randn(3, LENGTH, vit.width)}}[kind]
    for layout in ("before_cls", "after_cls"):
        vit.layout = layout
        vit.cls_shortcut = True
        fast = vit(images, **kwargs)
        vit.cls_shortcut = False
        plain = vit(images, **kwargs)
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)


def test_cls_shortcut_switch_runs_the_last_block_in_full_only_when_off(vit):
    calls = []
    hook = vit.vit.blocks[-1].register_forward_hook(lambda *_: calls.append(1))
    try:
        vit.cls_shortcut = True
        vit(_images(2), prompt=torch.randn(LENGTH, vit.width))
        assert not calls, "with the shortcut on, the last block must not run on every token"
        vit.cls_shortcut = False
        vit(_images(2), prompt=torch.randn(LENGTH, vit.width))
        assert calls == [1]
    finally:
        hook.remove()
    assert supports_cls_shortcut(vit.vit)
    assert not supports_cls_shortcut(torch.nn.Module())


def test_sdpa_switch_chooses_the_attention_kernel(vit, monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    images = _images(2)
    vit.set_sdpa(True)
    on = vit(images)
    assert len(calls) == vit.depth and all(b.attn.fused_attn for b in vit.vit.blocks)
    for setting in (False, None):  # None on a CPU tensor: the explicit path (measured faster there)
        vit.set_sdpa(setting)
        calls.clear()
        off = vit(images)
        assert not calls and not any(b.attn.fused_attn for b in vit.vit.blocks)
        torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-6)
    plain = load_vision_backbone("tiny-vit", 32, sdpa=False, cls_shortcut=False)
    assert plain.sdpa is False and not plain.cls_shortcut


def test_recording_attention_switches_the_fast_paths_off_and_back(vit):
    vit.cls_shortcut = True
    vit.set_sdpa(True)
    with record_attention(vit) as maps:
        assert not vit.cls_shortcut and vit.sdpa is False
        vit(_images(2), prompt=torch.randn(LENGTH, vit.width))
    assert len(maps) == vit.depth and vit.cls_shortcut and vit.sdpa is True


def _learnable(n: int, seed: int):
    """Images whose class sets the mean brightness of one colour channel: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.randn(n, 3, 32, 32, generator=g) * 0.5
    images[torch.arange(n), labels] += 1.5
    return images, labels


def test_training_with_the_fast_path_matches_the_reference(vit):
    """Same data order, same optimiser: the trajectories coincide, so do the accuracies."""
    fast, ref = _pair(vit)
    (train_x, train_y), (test_x, test_y) = _learnable(48, 1), _learnable(30, 2)
    cfg = TrainConfig(base_lr=0.5, batch_size=16, epochs=1, warmup_epochs=0, device="cpu", precision="auto")
    opt_fast, opt_ref = make_optimizer(fast, cfg), make_optimizer(ref, cfg)
    train_tokens = vit.embed(train_x).detach()
    for epoch in range(4):
        for batch in torch.randperm(48, generator=torch.Generator().manual_seed(epoch)).split(16):
            loss_fast, _ = train_step(fast, train_tokens[batch], train_y[batch], opt_fast)
            loss_ref, _ = train_step(ref, train_x[batch], train_y[batch], opt_ref)
            assert loss_fast.item() == pytest.approx(loss_ref.item(), rel=1e-3, abs=1e-5)
    torch.testing.assert_close(fast.prompt_source.prompt, ref.prompt, rtol=1e-3, atol=1e-4)
    acc_fast = evaluate(fast, (vit.embed(test_x).detach(), test_y))["acc"]
    acc_ref = evaluate(ref, (test_x, test_y))["acc"]
    assert acc_fast == pytest.approx(acc_ref, abs=1 / 30 + 1e-9)
    assert acc_ref > 1 / CLASSES + 0.1  # it learned something, so parity is not trivially at chance


def test_precision_switch_and_bf16_stays_close_to_fp32(vit):
    assert resolve_precision("auto", "cpu") is None and resolve_precision("fp32", "cuda") is None
    assert resolve_precision("bf16", "cpu") is torch.bfloat16 and resolve_precision("fp16", "cuda") is torch.float16
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="int8")
    fast, _ = _pair(vit)
    tokens, labels = vit.embed(_images()).detach(), torch.tensor([0, 1, 2, 0, 1, 2])
    seen = []
    hook = vit.vit.blocks[0].attn.qkv.register_forward_hook(lambda _m, _args, out: seen.append(out.dtype))
    logits = {}
    grads = {}
    try:
        for precision in ("fp32", "bf16"):
            optimizer = torch.optim.SGD(fast.parameters(), lr=0.0)  # lr 0: the step leaves the model as it is
            train_step(fast, tokens, labels, optimizer, dtype=resolve_precision(precision, "cpu"))
            grads[precision] = fast.prompt_source.prompt.grad.clone()
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits[precision] = fast(tokens).float()
    finally:
        hook.remove()
    assert seen[0] == torch.float32 and seen[2] == torch.bfloat16  # fp32 means no autocast at all
    torch.testing.assert_close(logits["bf16"], logits["fp32"], rtol=0.05, atol=0.05)
    cosine = F.cosine_similarity(grads["bf16"].flatten(), grads["fp32"].flatten(), dim=0)
    assert cosine > 0.98


def test_bf16_training_reaches_the_same_accuracy(vit):
    (train_x, train_y), (test_x, test_y) = _learnable(48, 1), _learnable(60, 2)
    train_tokens, test_tokens = vit.embed(train_x).detach(), vit.embed(test_x).detach()
    accs = {}
    for precision in ("fp32", "bf16"):
        fast, _ = _pair(vit)
        cfg = TrainConfig(base_lr=0.5, batch_size=16, epochs=6, warmup_epochs=1, device="cpu", precision=precision,
                          selection="last")
        accs[precision] = fit(fast, (train_tokens, train_y), None, (test_tokens, test_y), cfg).final["test_acc"]
    assert accs["fp32"] > 0.6
    assert accs["bf16"] == pytest.approx(accs["fp32"], abs=0.1)


def test_cache_features_switch_recomputes_the_backbone_every_epoch(tmp_path, monkeypatch):
    from cmpt.data import ImageTask
    import numpy as np

    from cmpt.run_config import TargetConfig
    from cmpt.runner import run_target
    from cmpt.profiles import get_profile
    from cmpt.target_data import TargetData

    monkeypatch.setenv("CMPT_RESULTS", str(tmp_path))
    cfg = get_profile("smoke")
    vit = load_vision_backbone("tiny-vit", cfg.image_size)
    n = {"train": 32, "val": 16, "test": 16}
    bounds = np.cumsum([0, *n.values()])
    labels = np.arange(bounds[-1]) % 2
    task = ImageTask("t", "g", ("a", "b"), np.zeros((bounds[-1], 1, 1, 3), np.uint8), labels,
                     {s: np.arange(bounds[i], bounds[i + 1]) for i, s in enumerate(n)})
    data = TargetData(task, {s: vit.embed(_images(k, i)).detach() for i, (s, k) in enumerate(n.items())},
                      {s: torch.as_tensor(labels[task.splits[s]]) for s in n})
    calls = []
    hook = vit.vit.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    config = TargetConfig.of(cfg, "linear", "t", seed=0, epochs=4, lr=0.1)
    try:
        run_target(config, vit, data, None, device="cpu", cache_features=True)
        cached = len(calls)
        calls.clear()
        run_target(config, vit, data, None, device="cpu", cache_features=False)
    finally:
        hook.remove()
    assert cached == 3  # one pass over each split, batched
    assert len(calls) == 4 + 1 + 1  # every epoch the train batch (one of 32); val and test once (last epoch counts)


def test_direct_mmd_table_agrees_with_cmpt():
    g = torch.Generator().manual_seed(0)
    prompts = {"a": torch.randn(4, 8, generator=g), "b": torch.randn(4, 8, generator=g) * 3,
               "c": torch.randn(6, 8, generator=g)}
    targets = {"x": torch.randn(60, 8, generator=g), "y": torch.randn(50, 8, generator=g) + 1}
    ours = modality_gap_table(prompts, targets, passes=2, seed=5)
    direct = direct_mmd_table(prompts, targets, passes=2, seed=5)
    assert list(ours[["source", "target"]].itertuples(index=False)) == list(
        direct[["source", "target"]].itertuples(index=False))
    np = pytest.importorskip("numpy")
    assert np.allclose(ours["mmd"], direct["mmd"], rtol=1e-10, atol=1e-12)


def test_counted_flops_match_the_formula(vit):
    _, ref = _pair(vit)
    images, labels = _images(4), torch.tensor([0, 1, 2, 0])
    optimizer = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.0)
    counted = step_flops(lambda: train_step(ref, images, labels, optimizer), ref) / 4
    tokens = LENGTH + 1 + vit.num_patches
    formula = vit_image_flops(vit.width, vit.depth, tokens, mlp_ratio=2.0)
    assert counted == pytest.approx(formula, rel=0.15)  # the rest: patch projection and head


def _counted(calls: dict[str, int], name: str, pause: float = 0.0):
    """A benchmark step that counts its calls in ``calls[name]`` and takes ``pause`` seconds.

    Steps compared for slowness take a few milliseconds, not none: a step of microseconds reads as
    several times slower than another after one scheduler hiccup on a loaded machine.
    """
    import time

    calls.setdefault(name, 0)

    def step() -> None:
        calls[name] += 1
        time.sleep(pause)
    return step


def test_a_variant_far_slower_than_the_rest_is_timed_once():
    from cmpt.perf import _alternate

    calls: dict[str, int] = {}
    steps = {"fast": _counted(calls, "fast", 0.002), "slow": _counted(calls, "slow", 0.05)}
    bc = BenchConfig(steps=3, rounds=2, warmup=2, slow_cap=4.0)
    rates = _alternate(steps, {"fast": 1, "slow": 1}, bc, torch.device("cpu"), "test")
    assert calls["slow"] == 1 and len(rates["slow"]) == 1 and rates["slow"][0] < 21  # one timed call, ~20/s
    assert calls["fast"] == 1 + (bc.warmup - 1) + bc.rounds * bc.steps and len(rates["fast"]) == bc.rounds


def test_a_variant_of_a_slow_step_is_not_run_and_calls_per_round_are_honoured():
    from cmpt.perf import _alternate

    calls: dict[str, int] = {}
    steps = {"fast": _counted(calls, "fast", 0.002), "big": _counted(calls, "big", 0.002),
             "slow": _counted(calls, "slow", 0.05), "slow, varied": _counted(calls, "slow, varied")}
    bc = BenchConfig(steps=4, rounds=2, warmup=1, slow_cap=4.0)
    rates = _alternate(steps, dict.fromkeys(steps, 1), bc, torch.device("cpu"), "test", calls={"big": 1},
                       after={"slow, varied": "slow"})
    assert calls["slow, varied"] == 0 and "slow, varied" not in rates  # its base was slow: never run
    assert calls["big"] == 1 + bc.rounds * 1 and calls["fast"] == 1 + bc.rounds * bc.steps
    # the variant of a step that was not slow runs as usual
    pair = {"fast": steps["fast"], "fast, varied": _counted(calls, "fast, varied", 0.002)}
    rates = _alternate(pair, dict.fromkeys(pair, 1), bc, torch.device("cpu"), "test", after={"fast, varied": "fast"})
    assert len(rates["fast, varied"]) == bc.rounds


def test_bench_config_follows_the_profile():
    bc = BenchConfig.from_profile("default")
    assert (bc.backbone, bc.image_size, bc.prompt_length, bc.batch_size) == ("dinov2-s14", 42, 8, 32)
    assert (bc.sources, bc.mmd_targets, bc.head_epochs) == (8, 3, DEFAULT.head_epochs)
    assert BenchConfig.from_profile("paper").n_test == 2000
    assert BenchConfig.from_profile("smoke", steps=5).steps == 5


def test_python_m_cmpt_bench_prints_the_five_figures(tmp_path):
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k not in ("CMPT_RECORDS", "MPLBACKEND")}
    env["CMPT_RESULTS"] = str(tmp_path / "results")
    proc = subprocess.run([sys.executable, "-m", "cmpt.bench", "--profile", "smoke", "--steps", "1", "--rounds", "1",
                           "--warmup", "0", "--head-epochs", "2", "--mmd-passes", "1", "--n-test", "16",
                           "--device", "cpu", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for figure in FIGURES:
        assert sum(line.startswith(figure) for line in lines) == 1, f"no line for {figure!r} in:\n{proc.stdout}"
        line = next(line for line in lines if line.startswith(figure))
        assert re.search(r"-> \d+\.\d+x|= \d+% of the measured", line), line  # each figure is a ratio
    assert lines[0].startswith("device: cpu")
    result = BenchResult.from_json(out.read_text())
    assert result.figures["prompt_tuning"]["images_per_s"]["cmpt"] > 0
    assert result.lines()[2:7] == lines[2:7]


def test_bench_memory_stays_flat_as_the_test_split_grows(tmp_path):
    """Ten times the test images (streamed from disk, 224 px) must not take much more memory."""
    out = tmp_path / "memory.json"
    env = {k: v for k, v in os.environ.items() if k not in ("CMPT_RECORDS", "MPLBACKEND")}
    proc = subprocess.run([sys.executable, "-m", "cmpt.bench", "--memory", "--memory-sizes", "100", "1000",
                           "--memory-train", "64", "--memory-val", "32", "--memory-cache-mib", "16",
                           "--device", "cpu", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[1].strip() for line in lines[1:3]] == ["n_test=100", "n_test=1,000"], lines
    assert re.search(r"peak ratio n_test=1,000 / n_test=100: \d\.\d{3} \(goal <= 1.25\)", lines[3]), lines
    import json

    result = json.loads(out.read_text())
    runs = {r["n_test"]: r for r in result["runs"]}
    assert runs[1000]["streamed"] == ["test"] and runs[1000]["cached"] == ["train", "val"]
    assert runs[1000]["cached_bytes"] <= 16 * 2**20
    # one test split of 1,000 224 px images would take ~600 MB as fp32 pixels: streaming keeps it out
    assert result["ratio"] <= 1.25, lines


def test_bench_memory_options_reach_the_config():
    from cmpt.bench import memory_config_from_args
    from cmpt.cli import build_parser

    args = build_parser().parse_args(["bench", "--memory", "--memory-sizes", "10", "20", "--memory-setting", "linear",
                                      "--memory-cache-mib", "8", "--device", "cpu"])
    mc = memory_config_from_args(args)
    assert (mc.sizes, mc.setting, mc.cache_mib, mc.device, mc.image_size, mc.n_train) == ((10, 20), "linear", 8,
                                                                                           "cpu", 224, 800)
    with pytest.raises(ValueError, match="at least two"):
        memory_config_from_args(build_parser().parse_args(["bench", "--memory", "--memory-sizes", "10"]))


def test_cmpt_bench_subcommand_is_wired():
    from cmpt.cli import build_parser

    from cmpt.bench import config_from_args

    args = build_parser().parse_args(["bench", "--profile", "smoke", "--batch-size", "8", "--no-cls-shortcut"])
    bc = config_from_args(args)
    assert (bc.profile, bc.batch_size, bc.cls_shortcut, bc.sdpa) == ("smoke", 8, False, None)
    assert config_from_args(build_parser().parse_args(["bench", "--sdpa", "on"])).sdpa is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_fast_path_on_cuda_matches_the_reference():
    vit = load_vision_backbone("tiny-vit", 32).cuda()
    fast, ref = _pair(vit)
    fast, ref = fast.cuda(), ref.cuda()
    images = _images().cuda()
    torch.testing.assert_close(fast(vit.embed(images)), ref(images), rtol=1e-3, atol=1e-3)


def test_loss_curve_parity_sees_a_difference_in_any_epoch_or_the_final_validation():
    from cmpt.perf import loss_curve_diff

    def record(losses, val):
        return {"metrics_per_epoch": [{"train_loss": v} for v in losses], "final": {"val_loss": val}}

    assert loss_curve_diff(record([2.0, 1.0, 0.5], 0.7), record([2.0, 1.0, 0.5], 0.7)) == 0
    assert loss_curve_diff(record([2.0, 1.0, 0.5], 0.7), record([2.0, 1.25, 0.5], 0.7)) == pytest.approx(0.25)
    assert loss_curve_diff(record([2.0], 0.7), record([2.0], 0.9)) == pytest.approx(0.2)
    with pytest.raises(ValueError):  # curves of different lengths are not the same run
        loss_curve_diff(record([2.0, 1.0], 0.7), record([2.0], 0.7))


def test_bench_reports_the_last_builds_efficiency_and_precision(tmp_path):
    import json

    from cmpt.bench import last_build_line

    records = tmp_path / "performance.json"
    assert last_build_line(records) is None  # no build yet: no line
    records.write_text(json.dumps({"performance/accounting": {"efficiency": 0.71, "wall_s": 3300.0},
                                   "performance/precision": "fp32"}))
    line = last_build_line(records)
    assert "71% of its 55.0 min" in line and "computed in fp32" in line
