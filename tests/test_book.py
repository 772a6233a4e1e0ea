"""The book pipeline: every chapter of the smoke book and what it records, the runner, the CLI, papermill."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import papermill
import pytest

from cmpt.book import BookError, chapters, plan_book
from cmpt.profiles import ProfileError, get_profile
from cmpt.settings import SETTINGS, get_setting
from cmpt.chapter_values import ENV_VAR, load_records
from cmpt.verdicts import VERDICTS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = [c for c in chapters(ROOT) if c.is_notebook]
SMOKE = get_profile("smoke")


def _check_inputs(rec: dict) -> None:
    L = SMOKE.prompt_length
    assert rec["inputs/readout_index"] == {"before_cls": L, "after_cls": 0}
    assert rec["inputs/vision_width"] == 32 and rec["inputs/text_width"] == 32
    assert 0.0 < rec["inputs/prompt_attention_mass_last_block"] < 1.0
    assert rec["inputs/feature_change_by_prompt"] > 0
    tasks = rec["inputs/tasks"]
    assert {t["task"] for t in tasks} == set(SMOKE.text_tasks) | set(SMOKE.image_tasks)
    assert 25 < rec["inputs/su2022_norm_spread"] < 35  # the shipped published prompts, always there


def _check_theory(rec: dict) -> None:
    keys = [k for k in rec if k.startswith("theory/")]
    assert keys, "the theory chapter recorded nothing"
    assert all(v is not None for k, v in rec.items() if k.startswith("theory/"))
    claims = ("beats_uniform", "beats_linear_with_decoys", "linear_fails_with_decoys", "linear_fails_with_confusion",
              "uniform_fails_with_confusion", "self_fails_when_irrelevant_dominate", "three_step_attends")
    for claim in claims:  # the "What this run shows" table: one verdict, effect and interval per claim
        assert rec[f"theory/{claim}/verdict"] in ("supported", "contradicted", "inconclusive"), claim
        low, high = rec[f"theory/{claim}/interval"]
        assert low <= rec[f"theory/{claim}/effect"] <= high, claim
        assert rec[f"theory/{claim}/seeds"] >= 2, claim
    for kind in ("prompt", "linear", "self", "uniform"):
        assert 0.0 <= rec[f"theory/separated/error/{kind}"] <= 1.0
    # the smoke run's separated regime: prompt-attention well below uniform averaging, and not contradicted
    assert rec["theory/separated/error/prompt"] < rec["theory/separated/error/uniform"] - 0.1
    assert rec["theory/beats_uniform/verdict"] != "contradicted"
    # decoys take away linear prompt-attention's signal, in the data and in its error
    assert abs(rec["theory/generator_cross_moment/decoys_1"]) < 0.05
    assert rec["theory/decoys_max/error/linear"] > rec["theory/decoys_min/error/linear"]
    assert rec["theory/decoys_max/error/oracle"] < 0.2
    assert rec["theory/three_step/relevant_mass"] > rec["theory/relevant_fraction"]  # uniform averaging puts k / T


def _check_source_prompts(rec: dict) -> None:
    for task in SMOKE.text_tasks:
        assert 0.0 <= rec[f"source/{task}/test_acc"] <= 1.0 and rec[f"source/{task}/norm"] > 0
    assert rec["source/beats_majority"] >= 1  # the smoke keyword tasks are learnable
    for task in SMOKE.text_tasks:
        assert 0.0 < rec[f"source/{task}/majority"] < 1.0 and 0.0 <= rec[f"source/{task}/linear_probe"] <= 1.0
    assert f"ours ({SMOKE.text_backbone})" in rec["source/norm_spread"]


def _check_baselines(rec: dict) -> None:
    for pair in ("vpt-linear", "spt-linear", "spt-vpt"):  # paired differences with their intervals
        effect, low, high = rec[f"baselines/diff/{pair}"]
        assert -1.0 <= effect <= 1.0 and (low is None or low <= effect <= high)
    for setting in ("linear", "vpt", "spt"):
        for task in SMOKE.image_tasks:
            assert 0.0 <= rec[f"baselines/{setting}/{task}"] <= 1.0
        # both smoke targets are Structured: the mean of group means is the mean of the two
        per_task = [rec[f"baselines/{setting}/{task}"] for task in SMOKE.image_tasks]
        assert rec[f"baselines/{setting}/mean_of_group_means"] == pytest.approx(sum(per_task) / len(per_task))
        # every setting's rate came from its grid, chosen on validation; its fit is on the page
        assert rec[f"baselines/rate/{setting}"] in get_setting(setting).rates
        for task in SMOKE.image_tasks:
            assert 0.0 <= rec[f"baselines/convergence/{setting}/{task}"] <= 1.0
    # one seed at smoke: a (setting, target)'s minimum is its one run, so the counts agree run for run
    assert rec["baselines/unconverged_runs"] == sum(rec[f"baselines/convergence/{s}/{t}"] < 0.95 for s in
                                                    ("linear", "vpt", "spt") for t in SMOKE.image_tasks)


def _check_transfer(rec: dict) -> None:
    for setting in ("projection", "frozen"):  # tiny-bert and tiny-vit are both 32 wide
        for source in SMOKE.text_tasks:
            for target in SMOKE.image_tasks:
                assert 0.0 <= rec[f"transfer/{setting}/{source}/{target}"] <= 1.0
    assert set(rec["transfer/best_source"]) == {"projection", "frozen"}
    assert {"linear", "random"} <= {k.split("/")[1] for k in rec if k.endswith("mean_of_group_means")}


def _check_attention(rec: dict) -> None:
    assert set(rec["attention/best_source_by_val"]) == set(SMOKE.image_tasks)
    L = SMOKE.prompt_length
    method = f"attention l_s={L // 2}"  # the main comparison; both smoke targets are Structured
    per_task = [rec[f"attention/{method}/{task}"] for task in SMOKE.image_tasks]
    assert rec[f"attention/{method}/mean_of_group_means"] == pytest.approx(sum(per_task) / len(per_task))
    assert 0.0 <= rec["attention/query_entropy"] <= math.log(L) + 1e-6
    assert set(rec["attention/l_s_sweep"]) == {"0", str(L // 4), str(L // 2), str(L)}


def _check_transferability(rec: dict) -> None:
    methods = ("combined", "modality", "task", "spot", "on", "random")
    for method in methods:
        for metric in ("kendall", "spearman"):
            value = rec[f"transferability/{metric}/{method}"]
            assert value is None or -1.0 <= value <= 1.0
        for metric in ("top1", "top3"):
            assert 0.0 <= rec[f"transferability/{metric}/{method}"] <= 1.0
        assert rec[f"transferability/cost_s/{method}"] >= 0.0
    assert rec["transferability/ground_truth_s"] > 0
    choice = rec["transferability/choice"]
    assert choice["phi"] in ("identity", "log", "sinh") and 0.0 <= choice["lambda_t"] <= 1.0
    assert abs(choice["lambda_t"] + choice["lambda_m"] - 1.0) < 1e-9
    assert {c["held_out"] for c in rec["transferability/loto_choices"]} == set(SMOKE.image_tasks)
    mmd = rec["transferability/mmd"]
    assert set(mmd) == set(SMOKE.text_tasks) and all(v > 0 for row in mmd.values() for v in row.values())
    share = rec["transferability/threshold_share_below_random"]
    assert share is None or 0.0 <= share <= 1.0
    assert set(rec["transferability/recommended"]) == set(SMOKE.image_tasks)
    assert set(rec["transferability/recommended"].values()) <= set(SMOKE.text_tasks)
    assert rec["transferability/claim_f/verdict"] in VERDICTS
    assert rec["transferability/claim_f/n_targets"] == len(SMOKE.image_tasks)


def _check_attention_maps(rec: dict) -> None:
    L = SMOKE.prompt_length
    target = "dsprites_loc"  # the first Structured task of the smoke profile
    settings = ("linear", "vpt", "frozen", "projection", "attention")
    assert rec["attention_maps/grid"] == [4, 4] and rec["attention_maps/layers_heads"] == [2, 2]
    for check in ("row_sum", "reapply", "rollout_row_sum"):
        assert rec[f"attention_maps/max_error/{check}"] < 1e-4
    for setting in settings:
        mass = rec[f"attention_maps/prompt_mass/{target}/{setting}"]
        assert len(mass) == 2 and all(0.0 <= m <= 1.0 for m in mass)
        assert (max(mass) == 0.0) == (setting == "linear")
        assert 0.0 <= rec[f"attention_maps/rollout_prompt_share/{target}/{setting}"] <= 1.0
        assert 0.0 <= rec[f"attention_maps/test_acc/{target}/{setting}"] <= 1.0
    weights = rec[f"attention_maps/query_attention/{target}"]
    assert len(weights) == L // 2 and all(len(row) == L and abs(sum(row) - 1) < 1e-5 for row in weights)
    assert 0.0 <= rec[f"attention_maps/query_entropy/{target}"] <= math.log(L) + 1e-6


def _check_data_scarcity(rec: dict) -> None:
    assert rec["scarcity/targets"] == ["clevr_count"] and rec["scarcity/subset_selection"] == "last"
    assert rec["scarcity/stratified"] is True and rec["scarcity/nested"] is True
    assert rec["scarcity/n_train"]["clevr_count"] == {"1-shot": 8, "4-shot": 32, "full": SMOKE.n_train}
    settings = set(rec["scarcity/settings"])
    assert settings == {"linear", "frozen", "vpt", "projection"}
    accs = {k: v for k, v in rec.items() if k.startswith("scarcity/acc/")}
    assert {k.split("/")[2] for k in accs} == settings and all(0.0 <= v <= 1.0 for v in accs.values())
    assert len(accs) == 3 * 4  # 3 training sets x 4 settings; no oracle curves by default
    assert all(-1.0 <= v <= 1.0 for k, v in rec.items() if k.startswith("scarcity/gain/"))
    gains = rec["scarcity/gain_over_vpt"]  # one paired comparison per setting and training set
    assert len(gains) == (len(settings) - 1) * 3 and {g["verdict"] for g in gains} <= set(VERDICTS)
    sentences = rec["scarcity/sentences"]
    assert len(sentences) == len(settings) - 1 and all("VPT" in line for line in sentences)
    assert set(rec["scarcity/sources"]["clevr_count"]) == {"val", "oracle"}


def _check_findings(rec: dict, records: Path) -> None:
    for claim in "abcdef":  # every claim, whatever its verdict
        assert rec[f"findings/{claim}/verdict"] in VERDICTS, claim
        low, high = rec[f"findings/{claim}/ci_these"]
        effect = rec[f"findings/{claim}/effect"]
        assert (low is None and high is None) or low <= effect <= high, claim
        assert rec[f"findings/{claim}/p_holm"] is None or rec[f"findings/{claim}/p"] <= rec[f"findings/{claim}/p_holm"]
        assert rec[f"findings/{claim}/mde"] is None or rec[f"findings/{claim}/mde"] > 0, claim
        assert rec[f"findings/{claim}/n_seeds"] == len(SMOKE.seeds), claim
    for claim in "abc":  # full-data accuracy claims: every target is a unit
        assert rec[f"findings/{claim}/n_targets"] == rec["findings/design/n_targets"] == len(SMOKE.image_tasks)
    assert rec["findings/design/n_test_min"] >= 1
    # the sign and size, not only the shape: claim (c) against VPT and SPT is the mean over targets of the
    # attention chapter's per-target accuracies minus the same runs of VPT and SPT
    attention = f"attention l_s={SMOKE.prompt_length // 2}"
    chapter = load_records(records / "attention_transfer.json")
    for name, setting in (("VPT", "vpt"), ("SPT", "spt")):
        expected = np.mean([chapter[f"attention/{attention}/{t}"] - chapter[f"attention/{setting}/{t}"]
                            for t in SMOKE.image_tasks])
        assert rec["findings/c/components"][name] == pytest.approx(expected, abs=1e-9)


def _check_performance(rec: dict) -> None:
    assert rec["performance/device"] in ("cpu", "cuda") and rec["performance/cores"] >= 1
    figures = rec["performance/figures"]
    assert set(figures) == {"prompt_tuning_speedup", "peak_fraction", "head_only_speedup", "mmd_speedup",
                            "memory_ratio"}
    assert all(v is not None and v > 0 for v in figures.values())
    assert rec["performance/images_per_s"]["cmpt"] > 0 and rec["performance/images_per_s"]["reference"] > 0
    assert rec["performance/parity_max_logit_diff"] < 1e-4 and rec["performance/mmd_max_rel_diff"] < 1e-9
    assert 0 <= rec["performance/head_only_parity_max_loss_diff"] < 1e-4  # cached features train the same head
    grid = rec["performance/paper_grid"]
    # 19 targets, 3 final seeds; grids: 36 points (VPT's 9 x 4) for linear, random, random_xavier, vpt,
    # vpt_deep, spt and frozen (x 13 sources), 1 for projection (x 13), 10 l_s + 8 x 4 for attention (x 13)
    finals = 3
    expected = 19 * (6 * (36 + finals) + 13 * (36 + finals) + 13 * (1 + finals) + 13 * (10 + 32 + finals))
    assert grid["runs"] == expected and grid["gpu_hours"] > 0 and grid["measured"] is False
    run_seconds = rec["performance/run_seconds"]
    assert all(v >= 0 for v in run_seconds.values())
    assert set(run_seconds) <= {"source prompt", *SETTINGS}
    chapter_seconds = rec["performance/chapter_seconds"]  # the book runner's times of the chapters before it
    assert "findings" in chapter_seconds and all(v >= 0 for v in chapter_seconds.values())
    assert "performance/ideas" not in rec or rec["performance/ideas"]["fp32"] == 1.0


#: what each chapter must have recorded at the smoke profile; a new chapter needs an entry
CHECKS = {
    "findings": _check_findings,
    "inputs": _check_inputs,
    "source_prompts": _check_source_prompts,
    "baselines": _check_baselines,
    "transfer": _check_transfer,
    "attention_transfer": _check_attention,
    "theory_prompt_attention": _check_theory,
    "transferability": _check_transferability,
    "attention_maps": _check_attention_maps,
    "data_scarcity": _check_data_scarcity,
    "performance": _check_performance,
}


def test_every_chapter_has_a_check():
    assert {c.stem for c in NOTEBOOKS} <= set(CHECKS), "add a CHECKS entry for each new chapter"


@pytest.mark.slow
@pytest.mark.parametrize("chapter", NOTEBOOKS, ids=[c.stem for c in NOTEBOOKS])
def test_chapter_records_its_numbers_in_the_smoke_book(chapter, smoke_book):
    """Each chapter as the smoke book executed it (papermill, the book's order and store); a chapter run
    alone on an empty store is the papermill tests' case below."""
    records = smoke_book[0] / "_build" / "records" / f"{chapter.stem}.json"
    assert records.is_file(), f"the smoke book recorded nothing for {chapter.stem}"
    if chapter.stem == "findings":  # its claims are checked against the chapters' own numbers
        _check_findings(load_records(records), records.parent)
    else:
        CHECKS[chapter.stem](load_records(records))


def test_notebooks_are_committed_without_outputs():
    for chapter in NOTEBOOKS:
        nb = json.loads(chapter.source.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, f"{chapter.entry} has outputs"
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{chapter.entry} needs exactly one cell tagged 'parameters'"
        assert re.search(r"^profile = \"default\"$", "".join(tagged[0]["source"]), re.M)


#: calls whose value is what the reader should see: made as a statement that is not a cell's last, it is lost
SHOWN_BY_VALUE = ("markdown_table", "Markdown")


def test_no_cell_drops_a_table_it_made():
    import ast

    lost = []
    for chapter in NOTEBOOKS:
        nb = json.loads(chapter.source.read_text())
        for index, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code":
                continue
            tree = ast.parse("".join(cell["source"]))
            last = tree.body[-1] if tree.body else None
            for node in ast.walk(tree):
                if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and node is not last
                        and ast.unparse(node.value.func).split(".")[-1] in SHOWN_BY_VALUE):
                    lost.append(f"{chapter.entry} cell {index} line {node.lineno}: {ast.unparse(node)[:60]}")
    assert not lost, "wrap these in display(...), or the page never shows them:\n" + "\n".join(lost)


def test_plan_routes_overrides_and_rejects_unknown_names(tmp_path):
    plan = plan_book(ROOT, tmp_path, "smoke", {"image_size": 48, "tokens_shown": 2})
    for chapter in plan.chapters:
        if chapter.is_notebook:
            params = plan.parameters[chapter.entry]
            assert params["profile"] == "smoke" and params["overrides"] == {"image_size": 48}
    assert plan.parameters["book/source_prompts"]["tokens_shown"] == 2  # a chapter parameter, its chapter only
    assert "tokens_shown" not in plan.parameters["book/inputs"]
    with pytest.raises(ProfileError, match="unknown parameter\\(s\\) bogus.*Profile parameters:.*image_size"):
        plan_book(ROOT, tmp_path, "smoke", {"bogus": 1})
    with pytest.raises(ProfileError, match="valid profiles"):
        plan_book(ROOT, tmp_path, "huge", {})
    with pytest.raises(BookError, match="unknown chapter"):
        plan_book(ROOT, tmp_path, "smoke", {}, only=["nope"])


def _cmpt(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "MPLBACKEND")}
    return subprocess.run([sys.executable, "-m", "cmpt", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_cli_rejects_bad_input_clearly(tmp_path):
    bad = _cmpt("book", "--profile", "smoke", "--out", str(tmp_path), "-p", "epochz", "3")
    assert bad.returncode == 2 and "unknown parameter(s) epochz" in bad.stderr
    bad = _cmpt("book", "--profile", "laptop", "--out", str(tmp_path))
    assert bad.returncode == 2 and "valid profiles: smoke, default, paper" in bad.stderr
    listed = _cmpt("profiles", "-v")
    assert listed.returncode == 0 and "prompt_layout = 'before_cls'" in listed.stdout


@pytest.mark.slow
def test_failing_chapter_stops_the_build_naming_notebook_and_cell(tmp_path):
    # tiny-vit cannot cut 30-pixel images into patches: the inputs chapter fails in a known cell
    proc = _cmpt("book", "--profile", "smoke", "--out", str(tmp_path), "--only", "inputs", "-p", "image_size", "30")
    assert proc.returncode == 1
    assert re.search(r"chapter book/inputs\.ipynb failed in cell \[\d+\] with ValueError", proc.stderr)
    assert (tmp_path / "_build" / "failed" / "inputs.ipynb").exists()
    assert not (tmp_path / "_build" / "executed" / "book" / "inputs.ipynb").exists()


@pytest.mark.slow
def test_smoke_book_builds_every_chapter_with_figures(smoke_book):
    out, first = smoke_book
    html = out / "_build" / "html"
    assert (html / "index.html").exists()
    for chapter in chapters(ROOT):
        page = html / (chapter.entry + ".html")
        assert page.exists(), f"{chapter.entry} missing from the HTML book"
        text = page.read_text()
        if chapter.is_notebook:
            assert "<img" in text, f"{chapter.entry} has no figure"
            assert re.search(r"\d+\.\d+", text), f"{chapter.entry} shows no numbers"
    assert "executing" in first
    # the intro opens with what this build found, written from the findings page's records
    records = load_records(out / "_build" / "records" / "findings.json")
    intro = (html / "book" / "intro.html").read_text()
    assert "What this build found (profile smoke)" in intro and "findings-summary" not in intro
    for key in "abcdef":
        assert f"({key}) " in intro and f"<strong>{records[f'findings/{key}/verdict']}</strong>" in intro, key
    # the sources stay clean: executed copies live under the output folder only
    assert not any(cell.get("outputs") for c in NOTEBOOKS for cell in json.loads(c.source.read_text())["cells"])


@pytest.mark.slow
def test_second_build_reuses_every_chapter(smoke_book):
    out, _ = smoke_book
    again = _cmpt("book", "--profile", "smoke", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert "executing" not in again.stdout
    assert again.stdout.count("unchanged, cached") == len(NOTEBOOKS)
    # another profile override invalidates the cache
    plan = plan_book(ROOT, out, "smoke", {"image_size": 48})
    assert plan.parameters[NOTEBOOKS[0].entry]["overrides"] == {"image_size": 48}


# --- plain papermill, JupyterLab and the runner share parameters, kernel and results ---------------------------

CMPT_KERNEL = {"name": "cmpt", "display_name": "Python (cmpt)", "language": "python"}


def _papermill(chapter: str, out: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Plain papermill, as a reader would call it: the notebook's own kernel (no -k), cwd inside the checkout."""
    from jupyter_client.kernelspec import KernelSpecManager

    if "cmpt" not in KernelSpecManager().find_kernel_specs():
        pytest.fail("the cmpt kernel is not installed; `make` installs it (ipykernel install --sys-prefix --name cmpt)")
    base = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "MPLBACKEND", "CMPT_RESULTS")}
    return subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "book" / f"{chapter}.ipynb"), str(out),
                           "--cwd", str(ROOT / "book"), "--no-progress-bar", *args],
                          cwd=ROOT / "book", capture_output=True, text=True, env={**base, **env})


def test_notebooks_use_the_cmpt_kernel_and_the_shared_first_cell():
    makefile = (ROOT / "Makefile").read_text()
    assert "ipykernel install --sys-prefix --name cmpt" in makefile
    for chapter in NOTEBOOKS:
        nb = json.loads(chapter.source.read_text())
        assert nb["metadata"]["kernelspec"] == CMPT_KERNEL, chapter.entry
        cells = nb["cells"]
        at = next(i for i, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        first = "".join(next(c for c in cells[at + 1:] if c["cell_type"] == "code")["source"])
        assert "cfg = cmpt.notebook_profile(profile, overrides, globals())" in first, chapter.entry
        assert "cmpt.get_profile(" not in first, chapter.entry
        if chapter.stem != "theory_prompt_attention":
            assert "cmpt.use_book_style()" in first and "sns.set_theme" not in first, chapter.entry


def test_plain_papermill_applies_a_profile_field_passed_on_its_own(tmp_path):
    records = tmp_path / "records.json"
    proc = _papermill("inputs", tmp_path / "out.ipynb", "-p", "profile", "smoke", "-p", "image_size", "48",
                      env={ENV_VAR: str(records), "CMPT_RESULTS": str(tmp_path / "results")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    used = load_records(records)["profile"]
    assert used["name"] == "smoke" and used["image_size"] == 48  # smoke's own is 32
    shown = json.loads((tmp_path / "out.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in shown["cells"] for o in c.get("outputs", []))
    assert "overrides: image_size=48" in text


def test_plain_papermill_fails_loudly_on_an_unknown_parameter(tmp_path):
    proc = _papermill("inputs", tmp_path / "out.ipynb", "-p", "profile", "smoke", "-p", "image_sise", "48",
                      env={ENV_VAR: str(tmp_path / "records.json"), "CMPT_RESULTS": str(tmp_path / "results")})
    assert proc.returncode != 0
    assert "unknown parameter(s) image_sise" in proc.stderr and "image_size" in proc.stderr


def _fake_kernel(monkeypatch, *cells: str) -> None:
    import cmpt.book_kernel

    monkeypatch.setattr(cmpt.book_kernel, "_kernel", lambda: (["", *cells], {}))


PARAMS_CELL = 'profile = "default"\noverrides = {}\nshots = [1, 4]\n'


def test_notebook_profile_reads_only_what_papermill_injected(monkeypatch, capsys):
    from cmpt.book import notebook_profile

    first = "cfg = cmpt.notebook_profile(profile, overrides, globals())"
    injected = '# Parameters\nprofile = "smoke"\noverrides = {}\nimage_size = 48\nseeds = "[1, 2]"\n'
    _fake_kernel(monkeypatch, PARAMS_CELL, injected, first)
    cfg = notebook_profile("smoke", {}, {"image_size": 48, "seeds": "[1, 2]", "n_train": 5})
    assert cfg.image_size == 48 and cfg.seeds == (1, 2) and cfg.n_train == SMOKE.n_train  # n_train was not injected
    assert "overrides: image_size=48, seeds=(1, 2)" in capsys.readouterr().out
    # JupyterLab: the parameters cell ran again after the injected one, so nothing counts as injected
    _fake_kernel(monkeypatch, PARAMS_CELL, injected, first, PARAMS_CELL, first)
    assert notebook_profile("smoke", {}, {"image_size": 48}).image_size == SMOKE.image_size
    assert capsys.readouterr().out == ""
    # no papermill at all: a variable named like a field, defined later, changes nothing
    _fake_kernel(monkeypatch, PARAMS_CELL, first, "seeds = [7]", first)
    assert notebook_profile("smoke", {}, {"seeds": [7]}).seeds == SMOKE.seeds


def test_notebook_profile_rejects_unknown_clashing_and_bad_values(monkeypatch):
    from cmpt.book import notebook_profile

    _fake_kernel(monkeypatch, PARAMS_CELL, '# Parameters\nprofile = "smoke"\nshotz = 3\n')
    with pytest.raises(ProfileError, match=r"unknown parameter\(s\) shotz.*image_size.*chapter's parameters: shots"):
        notebook_profile("smoke", {}, {"shotz": 3})
    _fake_kernel(monkeypatch, PARAMS_CELL, '# Parameters\nprofile = "smoke"\nshots = [1]\nimage_size = 48\n')
    assert notebook_profile("smoke", {}, {"shots": [1], "image_size": 48}).image_size == 48  # a chapter parameter
    with pytest.raises(ProfileError, match="image_size given both"):
        notebook_profile("smoke", {"image_size": 64}, {"image_size": 48})
    _fake_kernel(monkeypatch, PARAMS_CELL, '# Parameters\nimage_size = "big"\n')
    with pytest.raises(ProfileError, match="image_size must be int"):
        notebook_profile("smoke", {}, {"image_size": "big"})


def test_runner_injects_every_chapter_parameter():
    plan = plan_book(ROOT, ROOT, "smoke", {"shots": [1]})
    params = plan.parameters["book/data_scarcity"]
    assert params["shots"] == [1] and params["oracle"] is False and params["scarcity_targets"] == []
    assert set(params) == set(papermill.inspect_notebook(str(ROOT / "book" / "data_scarcity.ipynb")))


def test_cmpt_book_and_papermill_in_the_checkout_use_one_results_store(monkeypatch):
    from cmpt.results import ResultsStore, results_root

    monkeypatch.delenv("CMPT_RESULTS", raising=False)
    monkeypatch.chdir(ROOT / "book")  # where papermill --cwd and JupyterLab run a chapter
    plan = plan_book(ROOT, ROOT, "smoke", {})  # `cmpt book` without --out
    assert results_root() == plan.results == ROOT / "_build" / "results"
    assert ResultsStore.for_profile("smoke").root == plan.results / "smoke"
    assert plan_book(ROOT, Path("/elsewhere"), "smoke", {}).results == Path("/elsewhere/_build/results")


def _store_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_plain_papermill_reuses_the_runs_cmpt_book_stored(tmp_path):
    out = tmp_path / "book"
    built = _cmpt("book", "--profile", "smoke", "--out", str(out), "--only", "baselines", "--no-html")
    assert built.returncode == 0, built.stderr[-3000:]
    store = out / "_build" / "results"
    before = _store_files(store)
    assert any(name.endswith(".json") for name in before), "the book stored no runs"
    records = tmp_path / "records.json"
    again = _papermill("baselines", tmp_path / "again.ipynb", "-p", "profile", "smoke",
                       env={ENV_VAR: str(records), "CMPT_RESULTS": str(store)})
    assert again.returncode == 0, again.stderr[-3000:]
    assert load_records(records)["results_root"] == str(store.resolve())
    assert _store_files(store) == before, "papermill trained again instead of reading the book's runs"
    executed = json.loads((out / "_build" / "records" / "baselines.json").read_text())
    assert load_records(records)["baselines/vpt/mean_of_group_means"] == executed["baselines/vpt/mean_of_group_means"]


def test_cli_book_help_lists_chapters_their_parameters_and_the_profile_fields():
    proc = _cmpt("book", "--help")
    assert proc.returncode == 0, proc.stderr
    for chapter in NOTEBOOKS:
        assert f"\n  {chapter.stem}" in proc.stdout, chapter.stem
    assert "shots = [1, 4]" in proc.stdout and "include_deep = False" in proc.stdout
    assert "prompt_layout" in proc.stdout and "cmpt profiles -v" in proc.stdout


def _widget_notebook() -> dict:
    import nbformat

    table = {"output_type": "display_data", "metadata": {}, "data": {"text/html": "<table><tr><td>0.5</td></tr></table>"}}
    state = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_pick", "IPY_MODEL_out"]}},
        "pick": {"model_name": "DropdownModel", "state": {"description": "target", "index": 1,
                                                          "_options_labels": ["digits", "clevr_count"]}},
        "out": {"model_name": "OutputModel", "state": {"outputs": [table]}},
        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_label", "IPY_MODEL_progress"]}},
        "label": {"model_name": "HTMLModel", "state": {"value": "sweep"}},
        "progress": {"model_name": "FloatProgressModel", "state": {"value": 4, "max": 4}},
    }
    view = lambda mid: {"output_type": "display_data", "metadata": {},  # noqa: E731
                        "data": {"text/plain": "VBox(...)", "application/vnd.jupyter.widget-view+json":
                                 {"model_id": mid, "version_major": 2, "version_minor": 0}}}
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = 'default'\noverrides = {}", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("# Parameters\nprofile = 'smoke'", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("picker()", outputs=[nbformat.from_dict(view("bar")),
                                                               nbformat.from_dict(view("box"))])]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    return nb


def test_executed_copy_is_prepared_for_reading():
    from cmpt.book import prepare_for_reading

    nb = _widget_notebook()
    prepare_for_reading(nb)
    assert "hide-cell" in nb.cells[0].metadata["tags"]  # the notebook's defaults, folded
    assert nb.cells[1].metadata["tags"] == ["injected-parameters"]  # the values used, shown
    outputs = nb.cells[2].outputs
    assert [list(o["data"]) for o in outputs] == [["text/markdown"], ["text/html"]]  # the progress bar is gone
    assert "target `clevr_count`" in outputs[0]["data"]["text/markdown"]
    assert "<td>0.5</td>" in outputs[1]["data"]["text/html"]
    assert "widgets" not in nb.metadata


@pytest.mark.slow
def test_smoke_book_pages_show_their_parameters_once(smoke_book):
    out, _ = smoke_book
    for chapter in NOTEBOOKS:
        nb = json.loads((out / "_build" / "executed" / (chapter.entry + ".ipynb")).read_text())
        tags = [c["metadata"].get("tags", []) for c in nb["cells"]]
        assert sum("parameters" in t and "hide-cell" in t for t in tags) == 1, chapter.entry
        injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert len(injected) == 1 and "hide-cell" not in injected[0]["metadata"]["tags"]
        assert "widgets" not in nb["metadata"], f"{chapter.entry} keeps widget state"
        page = (out / "_build" / "html" / (chapter.entry + ".html")).read_text()
        assert "tag_injected-parameters" in page and "widget-view+json" not in page, chapter.entry
        assert "https://" not in "".join(re.findall(r'<script[^>]*src="[^"]*"', page)), chapter.entry


def test_book_style_fits_the_column():
    import matplotlib as mpl
    from matplotlib import pyplot as plt

    from cmpt.plotting import COLUMN_PX, markdown_table, use_book_style

    with mpl.rc_context():
        use_book_style()
        width, height = mpl.rcParams["figure.figsize"]
        assert width <= 8 and height <= 4 and width * mpl.rcParams["figure.dpi"] <= COLUMN_PX - 20
        assert mpl.rcParams["savefig.bbox"] == "tight"
        sizes = [mpl.rcParams[k] for k in ("font.size", "axes.labelsize", "xtick.labelsize", "ytick.labelsize",
                                            "legend.fontsize", "axes.titlesize")]
        assert all(isinstance(s, (int, float)) and s >= 9 for s in sizes)
        fig = plt.figure()
        assert fig.get_size_inches()[0] * fig.dpi <= COLUMN_PX
        plt.close(fig)
    import pandas as pd

    table = markdown_table(pd.DataFrame({"acc": [0.51234, float("nan")], "note": ["a|b", "c"]}, index=["x", "y"]))
    assert re.fullmatch(r"\| x +\| +0\.512 \| a\\\|b +\|", table.data.splitlines()[2]), table.data
    assert re.fullmatch(r"\| y +\| +– +\| c +\|", table.data.splitlines()[3]), table.data
