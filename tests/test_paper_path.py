"""The paper profile's whole code path on tiny models of the paper's classes and a VTAB-style folder.

The published prompts (768 wide) go into a randomly initialised timm ViT of ViT-B/16's class
(768 wide, 16-pixel patches; one block instead of twelve), on a VTAB-1k export folder of
generated images: su2022 bank -> frozen, projection and attention transfer and the linear probe
-> grid search on train800 chosen on val200 -> final runs on train800val200 -> records. The same
command again runs nothing.
"""

from __future__ import annotations

import pytest
import torch

from cmpt.backbones.vision import VisionPreprocess
from cmpt.backbones.vision_zoo import VISION_BACKBONES
from cmpt.cli import main
from cmpt.perf import write_vtab_export
from cmpt.results import ResultsStore

SEARCH = ('[("linear", "sgd", [0.1, 1.0], [0.0]), ("frozen", "sgd", [0.1, 1.0], [0.0]), '
          '("projection", "adam", [0.02], [0.001]), ("attention", "adam", [0.02, 0.05], [0.0])]')


def _tiny_vit_b16(image_size: int, local: str | None):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(img_size=image_size, patch_size=16, embed_dim=768, depth=1, num_heads=12, num_classes=0)
    return vit, VisionPreprocess(image_size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@pytest.fixture()
def paper_command(tmp_path, monkeypatch):
    write_vtab_export(tmp_path / "vtab", "dsprites_loc", 16, 8, 24, image_size=32)
    monkeypatch.setenv("CMPT_VTAB_ROOT", str(tmp_path / "vtab"))
    monkeypatch.setitem(VISION_BACKBONES, "vit-b16-in21k", _tiny_vit_b16)
    params = {"image_size": "32", "n_train": "16", "n_val": "8", "n_test": "24", "target_epochs": "2",
              "head_epochs": "3", "batch_size": "8", "seeds": "[42, 44]", "search": SEARCH,
              "concentrated_grid": "[50, 100]", "image_tasks": "['dsprites_loc']"}
    command = ["sweep", "--profile", "paper", "--results", str(tmp_path / "results"),
               "--settings", "linear", "frozen", "projection", "attention", "--sources", "mnli", "sst2"]
    for name, value in params.items():
        command += ["-p", name, value]
    return command, ResultsStore(tmp_path / "results" / "paper")


def _point(record: dict) -> tuple:
    c = record["config"]
    return c["setting"], c["source"], c["concentrated"], c["optimizer"], c["lr"], c["weight_decay"]


def test_paper_path_runs_search_then_finals_and_resumes(paper_command, capsys):
    command, store = paper_command
    assert main(command) == 0
    # phases: l_s (attention, 2 sources x 2), the grids (linear 2, frozen 2 x 2, projection 2 x 1,
    # attention 2 x 2, of which the default-lr point is the l_s phase's own run), finals (7 groups x 2 seeds)
    assert "30 runs: 28 ran, 2 already done, 0 failed" in capsys.readouterr().out
    records = [r for r in store.records() if r["config"]["kind"] == "target"]
    assert len(records) == 28 and all(r["status"] == "done" for r in records)
    search = [r for r in records if r["config"].get("stage") == "search"]
    finals = [r for r in records if r["config"].get("stage") == "final"]
    assert len(search) == 14 and len(finals) == 14
    for r in search:  # trained on train800, chosen on val200, never tested, at the first seed
        assert "train_split" not in r["config"] and r["config"]["selection"] == "val"
        assert r["final"]["test_acc"] is None and r["final"]["val_acc"] is not None and r["config"]["seed"] == 42
    by_point = {_point(r): r for r in search}
    for r in finals:  # train800val200 at the chosen values, on the searched schedule cut at the chosen epoch
        config = r["config"]
        assert config["train_split"] == "trainval" and config["selection"] == "last"
        assert 0.0 <= r["final"]["test_acc"] <= 1.0 and r["final"]["val_acc"] is None
        if config["source"]:
            assert config["source_bank"] == "su2022" and config["source_epochs"] is None
        chosen = by_point[_point(r)]
        rivals = [s for p, s in by_point.items() if p[:2] == _point(r)[:2]
                  and (config["setting"] != "attention" or p[2] == config["concentrated"])]
        assert chosen["final"]["val_acc"] == max(s["final"]["val_acc"] for s in rivals)
        best = chosen["final"]["best_epoch"]
        assert config["epochs"] == chosen["config"]["epochs"]  # the schedule the search ran
        assert config.get("stop_epoch") == (best if best < config["epochs"] else None)
        final_lrs = [row["lr"] for row in r["metrics_per_epoch"]]
        assert final_lrs == [row["lr"] for row in chosen["metrics_per_epoch"][:best]]
    assert {r["config"]["seed"] for r in finals} == {42, 44}
    assert main(command) == 0
    assert "30 runs: 0 ran, 30 already done, 0 failed" in capsys.readouterr().out


def test_a_frozen_prompt_of_another_width_is_refused_before_any_work(paper_command, capsys):
    command, store = paper_command
    assert main(command + ["-p", "vision_backbone", "tiny-vit", "--settings", "frozen"]) == 2
    err = capsys.readouterr().err
    assert "frozen transfer" in err and "768" in err and "projection or attention" in err
    assert not store.root.exists() or not list(store.root.iterdir())
