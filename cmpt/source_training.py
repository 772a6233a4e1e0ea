"""Source prompt tuning on a frozen text backbone (Su et al. 2022 style).

A prompt of ``L`` vectors and a linear head on the read-out token learn a text task while
the encoder stays frozen. The prompt starts from ``L`` randomly drawn vocabulary embeddings
(so it lives where the encoder's inputs live), drawn from a seed derived from the task *and*
the run's seed (:func:`init_seed`): two tasks never share a start, so a difference between
two sources cannot be a difference of initialisation alone; Adam with no weight decay, as AdamW with
wd 0 in Su et al. The result is saved in cmpt's portable prompt format with its
validation accuracy.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from cmpt.backbones.text import PromptedTextEncoder
from cmpt.errors import InputError
from cmpt.prompts import Prompt
from cmpt.train import FitResult, TrainConfig, fit

__all__ = ["TextPromptClassifier", "init_seed", "moved", "nearest_tokens", "text_features", "text_linear_probe",
           "tokenize_split", "train_source_prompt"]


def init_seed(task: str, seed: int) -> int:
    """The seed of a source prompt's initial vocabulary tokens: a stable function of task and seed."""
    digest = hashlib.sha256(f"{task}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def moved(start: torch.Tensor, end: torch.Tensor) -> float:
    """How far a prompt moved in training: mean token L2 distance over the mean start-token norm."""
    return float((end - start).norm(dim=-1).mean() / start.norm(dim=-1).mean().clamp_min(1e-12))


class TextPromptClassifier(nn.Module):
    """Trainable prompt + classifier around a frozen :class:`PromptedTextEncoder`.

    With a linear head by default; with ``label_words`` (and an encoder loaded with
    ``readout="mask"``) the classes are scored by the frozen MLM head's logits of those words
    at the mask position, as in Su et al. — then only the prompt trains.
    """

    def __init__(self, encoder: PromptedTextEncoder, length: int, num_classes: int, seed: int = 0,
                 label_words: list[str] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        gen = torch.Generator().manual_seed(seed)
        vocab = encoder.model.get_input_embeddings().weight
        picks = torch.randint(0, vocab.shape[0], (length,), generator=gen)
        self.prompt = nn.Parameter(vocab[picks].detach().clone())
        if label_words is not None:
            if len(label_words) != num_classes:
                raise ValueError(f"{len(label_words)} label words for {num_classes} classes")
            self.register_buffer("word_ids", encoder.label_word_ids(label_words))
            self.head = None
        else:
            self.head = nn.Linear(encoder.width, num_classes)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        features = self.encoder(inputs["input_ids"], inputs["attention_mask"], prompt=self.prompt)
        if self.head is None:
            return self.encoder.mask_logits(features, self.word_ids)
        return self.head(features)


def tokenize_split(encoder: PromptedTextEncoder, texts: list[str], labels: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``(inputs, labels)`` tensors for :func:`cmpt.train.fit`."""
    return encoder.tokenize(list(texts)), torch.as_tensor(labels, dtype=torch.long)


def train_source_prompt(encoder: PromptedTextEncoder, task: Any, length: int, epochs: int, lr: float,
                        batch_size: int, seed: int, backbone_name: str, device: str = "auto") -> tuple[Prompt, FitResult]:
    """Tune a prompt on ``task`` (a :class:`cmpt.data.TextTask`); returns it and the fit record."""
    torch.manual_seed(seed)
    model = TextPromptClassifier(encoder, length, len(task.classes), seed=init_seed(task.name, seed))
    start = model.prompt.detach().clone()
    splits = [tokenize_split(encoder, *task.split(name)) for name in ("train", "val", "test")]
    train_cfg = TrainConfig(optimizer="adam", base_lr=lr, weight_decay=0.0, batch_size=batch_size, epochs=epochs,
                      warmup_epochs=0, scale_lr=False, seed=seed, selection="val", device=device)
    result = fit(model, *splits, train_cfg)
    prompt = Prompt(model.prompt.detach().cpu(), source_backbone=backbone_name, task=task.name, group=task.group,
                    layout="prepend",
                    training={"val_acc": result.final["val_acc"], "test_acc": result.final["test_acc"],
                              "best_epoch": result.final["best_epoch"], "epochs": epochs, "lr": lr, "seed": seed,
                              "init_seed": init_seed(task.name, seed), "moved": moved(start, model.prompt.detach()),
                              "n_train": len(splits[0][1]), "selection": "val"})
    return prompt, result


@torch.no_grad()
def nearest_tokens(prompt: torch.Tensor, encoder: PromptedTextEncoder, k: int = 1) -> list[list[str]]:
    """For each prompt vector, the ``k`` vocabulary tokens whose embeddings are closest (cosine)."""
    vocab = encoder.model.get_input_embeddings().weight
    sims = nn.functional.normalize(prompt.float(), dim=-1) @ nn.functional.normalize(vocab.float(), dim=-1).T
    ids = sims.topk(k, dim=-1).indices
    return [encoder.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids]


@torch.no_grad()
def text_features(encoder: PromptedTextEncoder, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """The frozen encoder's read-out features of ``texts`` with no prompt, ``[N, width]``."""
    encoder.eval()
    chunks = []
    for start in range(0, len(texts), batch_size):
        inputs = encoder.tokenize(list(texts[start:start + batch_size]))
        chunks.append(encoder(inputs["input_ids"], inputs["attention_mask"]).float().cpu())
    return torch.cat(chunks) if chunks else torch.zeros(0, encoder.width)


def text_linear_probe(encoder: PromptedTextEncoder, task: Any, strengths: tuple[float, ...] = (0.1, 1.0, 10.0),
                      seed: int = 0) -> dict[str, float]:
    """A logistic-regression probe on the frozen encoder (no prompt): the reference a source prompt must beat.

    The inverse regularisation strength is chosen on the validation split; returns ``val_acc``,
    ``test_acc`` and the chosen ``C``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not strengths:
        raise InputError("text_linear_probe needs at least one regularisation strength")
    feats = {name: text_features(encoder, task.split(name)[0]).numpy() for name in ("train", "val", "test")}
    labels = {name: task.split(name)[1] for name in ("train", "val", "test")}
    best: dict[str, float] | None = None
    for c in strengths:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
        probe.fit(feats["train"], labels["train"])
        val = float(probe.score(feats["val"], labels["val"]))
        if best is None or val > best["val_acc"]:
            best = {"val_acc": val, "test_acc": float(probe.score(feats["test"], labels["test"])), "C": c}
    return best  # type: ignore[return-value]
