"""The shipped Su et al. (2022) prompts: complete, unchanged, installed with the package."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import cmpt.published_prompts as published
from cmpt.assets import AssetError
from cmpt.errors import UnknownNameError
from cmpt.prompts import SU2022_TASKS, load_prompt
from cmpt.published_prompts import SU2022_TASK_NAMES, convert_su2022, published_dir, su2022_norms, su2022_prompts

ROOT = Path(__file__).resolve().parents[1]


def test_all_thirteen_load_in_the_published_order_with_their_metadata():
    prompts = su2022_prompts()
    assert list(prompts) == [task for task, _ in SU2022_TASKS.values()] == list(SU2022_TASK_NAMES)
    groups = {task: group for task, group in SU2022_TASKS.values()}
    for task, prompt in prompts.items():
        assert prompt.tensor.shape == (100, 768) and prompt.tensor.dtype == torch.float32
        assert prompt.task == task and prompt.group == groups[task]
        assert prompt.source_backbone == "roberta-base" and prompt.training["origin"] == "Su et al. 2022, published"
    assert list(su2022_prompts(["mrpc", "imdb"])) == ["imdb", "mrpc"]  # the published order, whatever was asked


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="'rte'.*valid: imdb, sst2, laptop"):
        su2022_prompts(["imdb", "rte"])


def test_norms_come_from_the_tensors_and_span_thirty_fold():
    norms = su2022_norms()
    prompts = su2022_prompts()
    assert norms == {t: pytest.approx(float(p.tensor.norm(dim=1).mean())) for t, p in prompts.items()}
    assert norms["mnli"] == pytest.approx(32.5, abs=0.1) and norms["movierationales"] == pytest.approx(1.11, abs=0.01)
    assert max(norms, key=norms.get) == "mnli" and min(norms, key=norms.get) == "movierationales"
    assert 25 < max(norms.values()) / min(norms.values()) < 35
    assert published.SU2022_NORMS == norms
    assert "SU2022_NORMS = {" not in Path(published.__file__).read_text()  # computed, never written down


def test_the_files_ship_with_licence_and_attribution():
    folder = published_dir()
    assert folder == Path(published.__file__).parent / "published" / "su2022"
    assert sorted(p.stem for p in folder.glob("*.safetensors")) == sorted(SU2022_TASK_NAMES)
    assert "Copyright (c) 2022 Yusheng Su" in (folder / "LICENSE").read_text()
    readme = (folder / "README.md").read_text()
    assert "On Transferability of Prompt Tuning for Natural Language Processing" in readme and "NAACL 2022" in readme
    assert sum(p.stat().st_size for p in folder.iterdir()) < 5 * 2**20
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["cmpt"]
    shipped = {p.relative_to(folder.parents[1]).as_posix() for p in folder.iterdir()}
    assert all(any(Path(name).match(g) for g in globs) for name in shipped), (shipped, globs)


def test_loading_needs_nothing_outside_the_package(tmp_path):
    """A fresh interpreter in an unrelated folder, with only the installed package on its path."""
    code = ("import cmpt.published_prompts as p, torch; d = p.su2022_prompts(); "
            "assert len(d) == 13 and all(v.tensor.shape == (100, 768) for v in d.values()); print(p.published_dir())")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).is_relative_to(ROOT / "cmpt")


def test_bit_identical_to_the_published_tensors(su2022_dir):
    prompts = su2022_prompts()
    for stem, (task, _) in SU2022_TASKS.items():
        original = torch.load(su2022_dir / f"{stem}.pt", map_location="cpu", weights_only=True)
        assert torch.equal(prompts[task].tensor, original), task


def test_conversion_rewrites_the_tensors_unchanged(tmp_path):
    source = tmp_path / "pt"
    source.mkdir()
    gen = torch.Generator().manual_seed(0)
    originals = {}
    for stem in SU2022_TASKS:
        originals[stem] = torch.randn(100, 768, generator=gen) * (1 + len(stem))
        torch.save(originals[stem], source / f"{stem}.pt")
    written = convert_su2022(source, tmp_path / "out")
    assert len(written) == 13
    for stem, (task, group) in SU2022_TASKS.items():
        prompt = load_prompt(tmp_path / "out" / f"{task}.safetensors")
        assert torch.equal(prompt.tensor, originals[stem]) and prompt.group == group
        assert prompt.training == {"origin": "Su et al. 2022, published", "file": f"{stem}.pt"}
    (source / "MNLI.pt").unlink()
    with pytest.raises(AssetError, match="MNLI.pt is missing"):
        convert_su2022(source, tmp_path / "again")
