import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cmpt.stats import decode_correct
from cmpt.train import BEST_TEST_PROTOCOL, TrainConfig, evaluate, fit, param_groups, warmup_cosine


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well separated Gaussian blobs in 2-D."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0.0], [-4.0, 0.0], [0.0, 4.0]])
    labels = torch.randint(0, 3, (n,), generator=g)
    return centres[labels] + torch.randn(n, 2, generator=g), labels


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))


CFG = TrainConfig(optimizer="adam", base_lr=0.05, scale_lr=False, batch_size=32, epochs=8, warmup_epochs=2,
                  device="cpu")


def test_linear_model_learns_separable_blobs():
    torch.manual_seed(0)
    result = fit(nn.Linear(2, 3), blobs(300, 1), blobs(100, 2), blobs(200, 3), CFG)
    assert result.final["test_acc"] > 0.9 and result.final["val_acc"] > 0.9
    assert result.n_trainable == 9 and len(result.history) == CFG.epochs
    assert set(result.history[0]) == {"epoch", "lr", "train_loss", "train_acc", "val_acc", "val_loss"}
    assert [row["epoch"] for row in result.history] == list(range(1, CFG.epochs + 1))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    record = result.to_record()
    assert record["final"]["n_trainable"] == 9 and record["metrics_per_epoch"] == result.history
    # where the time went, for the build's accounting: every epoch's training images, both loops timed
    assert result.clock["train_images"] == 300 * CFG.epochs and record["clock"] == result.clock
    assert result.clock["train_s"] > 0 and result.clock["eval_s"] > 0


def test_same_seed_same_history():
    data = blobs(100, 1), blobs(50, 2), blobs(50, 3)
    cfg = TrainConfig(optimizer="sgd", base_lr=0.5, batch_size=16, epochs=3, device="cpu")
    first = fit(mlp(), *data, cfg)
    second = fit(mlp(), *data, cfg)
    assert first.history == second.history and first.final == second.final
    other = fit(mlp(), *data, TrainConfig(**{**cfg.as_dict(), "seed": 7}))
    assert other.history != first.history  # the seed drives the shuffling


def test_param_groups_exempt_biases_and_norms():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model.prompt = nn.Parameter(torch.zeros(3, 4))
    model[2].weight.requires_grad_(False)
    groups = param_groups(model.named_parameters(), weight_decay=0.01)
    by_decay = {g["weight_decay"]: set(g["names"]) for g in groups}
    assert by_decay == {0.01: {"0.weight", "prompt"}, 0.0: {"0.bias", "1.weight", "1.bias", "2.bias"}}
    assert sum(len(g["params"]) for g in groups) == 6  # the frozen weight is left out


def test_warmup_then_cosine_per_epoch():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup=2, total=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert lrs == pytest.approx(expected)
    assert expected[2:4] == pytest.approx([1.0, 0.5 + 0.5 * math.sqrt(0.5)])
    with pytest.raises(ValueError):
        warmup_cosine(opt, warmup=6, total=6)


def test_config_caps_warmup_and_scales_lr():
    assert TrainConfig(epochs=100).warmup == 10
    assert TrainConfig(epochs=3).warmup == 1 and TrainConfig(epochs=1).warmup == 0
    assert TrainConfig(base_lr=0.1, batch_size=64).lr == pytest.approx(0.025)
    assert TrainConfig(base_lr=0.1, batch_size=64, scale_lr=False).lr == 0.1
    with pytest.raises(ValueError, match="selection"):
        TrainConfig(selection="test")
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    result = fit(nn.Linear(2, 3), blobs(20, 1), blobs(10, 2), blobs(10, 3),
                 TrainConfig(base_lr=1.0, batch_size=256, epochs=4, warmup_epochs=10, device="cpu"))
    assert [row["lr"] for row in result.history] == pytest.approx([0.5, 1.0, 1.0, 0.5])


class Scripted(nn.Module):
    """Trains a real head, but in eval mode returns logits with scripted accuracies.

    The training forward writes the epoch into ``tag`` (a trainable parameter that gets no
    gradient), so the accuracy an evaluation sees follows the *state* the model holds.
    """

    VAL = [0.5, 0.9, 0.9, 0.7]
    TEST = [0.6, 0.7, 1.0, 0.8]

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(2, 2)
        self.tag = nn.Parameter(torch.zeros(()))
        self.epochs_seen = 0
        self.evaluations: list[tuple[str, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.epochs_seen += 1  # one batch per epoch
            with torch.no_grad():
                self.tag.fill_(self.epochs_seen)
            return self.head(x)
        epoch = int(self.tag.item())
        split = "val" if x[0, 0] == 0 else "test"
        acc = (self.VAL if split == "val" else self.TEST)[epoch - 1]
        self.evaluations.append((split, epoch))
        right = round(acc * len(x))
        logits = torch.zeros(len(x), 2)
        logits[:right, 0] = 1.0  # every label is 0
        logits[right:, 1] = 1.0
        return logits


def _scripted_run(selection: str) -> tuple[Scripted, dict, list]:
    model = Scripted()
    train = (torch.randn(4, 2), torch.randint(0, 2, (4,)))
    val = (torch.zeros(10, 2), torch.zeros(10, dtype=torch.long))
    test = (torch.ones(10, 2), torch.zeros(10, dtype=torch.long))
    cfg = TrainConfig(batch_size=4, epochs=4, selection=selection, device="cpu")
    result = fit(model, train, val, test, cfg)
    return model, result.final, result.history


def test_val_selection_reports_test_accuracy_of_best_val_epoch():
    model, final, history = _scripted_run("val")
    assert [row["val_acc"] for row in history] == Scripted.VAL
    assert final["best_epoch"] == 2 and final["val_acc"] == 0.9  # tie with epoch 3: the earliest wins
    assert final["test_acc"] == pytest.approx(0.7)
    assert [e for e in model.evaluations if e[0] == "test"] == [("test", 2)]  # test seen once, at the end
    assert model.tag.item() == 2  # the model holds the selected state
    assert "best test" not in final["protocol"] and "test_acc" not in history[0]


def test_best_test_reports_max_over_epochs_and_says_so():
    model, final, history = _scripted_run("best_test")
    assert [row["test_acc"] for row in history] == Scripted.TEST
    assert final["test_acc"] == 1.0 and final["best_epoch"] == 3
    assert final["protocol"] == BEST_TEST_PROTOCOL
    assert final["protocol"] == "best test accuracy over epochs (selection on test; the original code's protocol)"


def test_last_epoch_selection():
    model, final, _ = _scripted_run("last")
    assert final["best_epoch"] == 4 and final["test_acc"] == pytest.approx(0.8) and final["val_acc"] == 0.7


def test_only_trainable_parameters_change():
    model = mlp()
    model[0].requires_grad_(False)
    frozen = {k: v.clone() for k, v in model[0].state_dict().items()}
    head = {k: v.clone() for k, v in model[2].state_dict().items()}
    result = fit(model, blobs(64, 1), blobs(32, 2), blobs(32, 3), TrainConfig(epochs=2, batch_size=16, device="cpu"))
    assert result.n_trainable == 8 * 3 + 3
    assert all(torch.equal(frozen[k], v) for k, v in model[0].state_dict().items())
    assert not torch.equal(head["weight"], model[2].weight.detach())
    assert set(result.state) == {"2.weight", "2.bias"}


def test_dataloader_and_structured_inputs():
    x, y = blobs(64, 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    result = fit(nn.Linear(2, 3), loader, blobs(32, 2), blobs(32, 3), CFG)
    assert result.final["test_acc"] > 0.8

    def forward(model, inputs):
        return model(inputs["a"] + inputs["b"])

    split = lambda n, s: ({"a": blobs(n, s)[0], "b": torch.zeros(n, 2)}, blobs(n, s)[1])  # noqa: E731
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    result = fit(model, split(64, 1), None, split(32, 3), TrainConfig(**{**CFG.as_dict(), "selection": "last"}),
                 forward=forward)
    assert result.final["val_acc"] is None and result.final["test_acc"] > 0.8
    assert evaluate(model, split(32, 3), forward=forward)["acc"] == result.final["test_acc"]
    with pytest.raises(ValueError, match="validation"):
        fit(model, split(64, 1), None, split(32, 3), CFG, forward=forward)


@pytest.mark.parametrize("selection", ["val", "last", "best_test"])
def test_per_example_correctness_matches_test_accuracy(selection):
    model, final, history = _scripted_run(selection)
    bits = decode_correct(final["test_correct"], final["test_n"])
    assert final["test_n"] == 10 and bits.dtype == bool
    assert bits.sum() / len(bits) == final["test_acc"]  # exact parity, not approximate
    # The scripted model gets the first round(acc * n) test examples right and the rest wrong.
    expected = {"val": 0.7, "last": 0.8, "best_test": 1.0}[selection]
    assert bits.tolist() == [i < round(expected * 10) for i in range(10)]
    if selection == "best_test":  # the bits of the selected epoch, not of the last one
        assert history[-1]["test_acc"] == pytest.approx(0.8) and bits.all()


def test_per_example_correctness_of_a_real_run_and_evaluate_flag():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    test = blobs(203, 3)  # not a multiple of 8 or of the batch size
    result = fit(model, blobs(300, 1), blobs(100, 2), test, TrainConfig(**{**CFG.as_dict(), "eval_batch_size": 64}))
    bits = decode_correct(result.final["test_correct"], result.final["test_n"])
    assert len(bits) == 203 and bits.mean() == result.final["test_acc"]
    assert len(result.final["test_correct"]) == 2 * 26  # 203 bits pack into 26 bytes
    with torch.no_grad():
        expected = (model(test[0]).argmax(-1) == test[1]).numpy()
    assert np.array_equal(bits, expected)
    out = evaluate(model, test, batch_size=50, per_example=True)
    assert out["correct"].dtype == torch.bool and np.array_equal(out["correct"].numpy(), expected)
    assert out["acc"] == result.final["test_acc"] and "correct" not in evaluate(model, test)


def test_build_accounting_counts_only_the_runs_this_build_made():
    import pandas as pd

    from cmpt.analysis import build_accounting

    chapters = {"book/a": {"seconds": 100.0, "finished": "2026-01-01T10:01:40Z"},
                "book/b": {"seconds": 50.0, "finished": "2026-01-01T10:02:30Z"}}  # the build: 10:00:00 to 10:02:30
    runs = pd.DataFrame([
        {"hash": "1", "kind": "target", "setting": "vpt", "wall_time_s": 60.0, "train_s": 40.0, "eval_s": 10.0,
         "train_images": 4000, "finished_at": "2026-01-01T10:01:00+00:00"},
        {"hash": "2", "kind": "source_prompt", "setting": None, "wall_time_s": 30.0, "train_s": 25.0, "eval_s": 2.0,
         "train_images": 500, "finished_at": "2026-01-01T10:02:00+00:00"},
        {"hash": "3", "kind": "target", "setting": "vpt", "wall_time_s": 999.0, "train_s": 900.0, "eval_s": 9.0,
         "train_images": 1, "finished_at": "2025-12-31T09:00:00+00:00"},  # an earlier build's: reused, not counted
    ])
    table, totals = build_accounting(runs, chapters, install_s=50.0)
    assert table.loc["vpt", "runs"] == 1 and table.loc["vpt", "training images/s"] == 100.0
    assert table.loc["source prompt", "other_in_runs_s"] == 3.0
    assert totals["training_s"] == 65.0 and totals["evaluation_s"] == 12.0 and totals["outside_runs_s"] == 60.0
    assert totals["wall_s"] == 200.0 and totals["efficiency"] == (65.0 + 12.0) / 200.0
    parts = totals["install_s"] + totals["training_s"] + totals["evaluation_s"] + totals["in_runs_other_s"]
    assert parts + totals["outside_runs_s"] == totals["wall_s"]  # the parts add up to the measured wall
