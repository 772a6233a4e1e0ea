import pytest
import torch

from cmpt.backbones import load_vision_backbone
from cmpt.errors import InputError, UnknownNameError
from cmpt.spt import METHODS, SelfPrompt, embedded_patches, prototypes
from cmpt.train import TrainConfig, fit
from cmpt.transfer import PromptedClassifier


@pytest.fixture(scope="module")
def vit():
    return load_vision_backbone("tiny-vit", 32)


def clusters(per_cluster: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four tight clusters in 8-D, far apart: (tokens [M, 8] in shuffled order, centres [4, 8])."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.zeros(4, 8)
    for i in range(4):
        centres[i, 2 * i] = 10.0
    centres[1] *= -1
    tokens = centres.repeat_interleave(per_cluster, 0) + 0.1 * torch.randn(4 * per_cluster, 8, generator=g)
    return tokens[torch.randperm(len(tokens), generator=g)], centres


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows in a canonical order (by the position and sign of their largest entry)."""
    keys = [int(r.abs().argmax()) * 2 + int(r[r.abs().argmax()] < 0) for r in x]
    return x[torch.tensor(keys).argsort()]


def test_kmeans_recovers_well_separated_centres():
    tokens, centres = clusters()
    found = prototypes(tokens, 4, "kmeans", seed=0)
    assert found.shape == (4, 8) and found.dtype == torch.float32
    assert torch.allclose(_sorted_rows(found), _sorted_rows(centres), atol=0.05)
    capped = prototypes(tokens.reshape(12, 100, 8), 4, "kmeans", seed=1, max_tokens=200)  # [N, P, D] and the cap
    assert torch.allclose(_sorted_rows(capped), _sorted_rows(centres), atol=0.1)


@pytest.mark.parametrize("method", METHODS)
def test_methods_are_deterministic_for_a_seed(method):
    tokens = torch.randn(6, 50, 16, generator=torch.Generator().manual_seed(3))
    first = prototypes(tokens, 5, method, seed=7, max_tokens=120)
    assert first.shape == (5, 16)
    assert torch.equal(first, prototypes(tokens, 5, method, seed=7, max_tokens=120))
    assert not torch.equal(first, prototypes(tokens, 5, method, seed=8, max_tokens=120))


def test_sample_and_mean_are_made_of_the_tokens():
    tokens = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))
    picked = prototypes(tokens, 7, "sample", seed=2)
    rows = [int((tokens == p).all(dim=1).nonzero()) for p in picked]  # each is exactly one input token
    assert len(set(rows)) == 7
    means = prototypes(tokens, 8, "mean", seed=2)  # 40 tokens in 8 groups of 5
    assert torch.allclose(means.mean(0), tokens.mean(0), atol=1e-6)
    assert not torch.allclose(means[0], means[1])
    singles = prototypes(tokens, 40, "mean", seed=2)  # one token per group: a permutation of the tokens
    assert torch.equal(_rows_sorted_lex(singles), _rows_sorted_lex(tokens))


def _rows_sorted_lex(x: torch.Tensor) -> torch.Tensor:
    return x[sorted(range(len(x)), key=lambda i: x[i].tolist())]


def test_bad_lengths_and_inputs_are_input_errors():
    tokens = torch.randn(2, 3, 4)  # 6 tokens
    with pytest.raises(InputError, match="cannot build 7 sample prototypes from 6 patch tokens"):
        prototypes(tokens, 7, "sample")
    with pytest.raises(InputError, match="7 mean prototypes"):
        prototypes(tokens, 7, "mean")
    with pytest.raises(InputError, match="max_tokens=5"):
        prototypes(tokens, 6, "kmeans", max_tokens=5)
    for length in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="positive integer"):
            prototypes(tokens, length, "sample")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="kmeans, mean, sample"):
        prototypes(tokens, 2, "medoids")
    with pytest.raises(InputError, match="shape"):
        prototypes(torch.randn(4), 2, "sample")
    with pytest.raises(InputError, match="NaN"):
        prototypes(torch.full((4, 2), float("nan")), 2, "sample")


def test_embedded_patches_drop_the_cls_token(vit):
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embedded = vit.embed(images)
    cls = (vit.vit.cls_token + vit.vit.pos_embed[:, :1])[0, 0]
    assert torch.allclose(embedded[:, 0], cls.expand(5, -1))  # index 0 of embed() is the CLS token
    tokens = embedded_patches(vit, images, batch_size=2)
    assert tokens.shape == (5, vit.num_patches, vit.width)
    assert torch.allclose(tokens, embedded[:, 1:])
    assert torch.equal(embedded_patches(vit, embedded), embedded[:, 1:])  # precomputed embed() output
    few = embedded_patches(vit, embedded, per_image=3, seed=1)
    assert few.shape == (5, 3, vit.width)
    assert all(bool((embedded[i, 1:] == t).all(-1).any()) for i in range(5) for t in few[i])
    with pytest.raises(InputError, match="embedded tokens"):
        embedded_patches(vit, torch.randn(2, 5, vit.width + 1))


@pytest.mark.parametrize("method", METHODS)
def test_initial_prompt_is_the_prototypes_bit_for_bit(vit, method):
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embedded = vit.embed(images)
    source = SelfPrompt.from_tokens(embedded[:, 1:], 4, method, seed=3)
    expected = prototypes(embedded[:, 1:], 4, method, seed=3)
    assert isinstance(source.prompt, torch.nn.Parameter) and source.prompt.requires_grad
    assert torch.equal(source.prompt.detach(), expected)
    assert source.forward().keys() == {"prompt"} and source.forward()["prompt"] is source.prompt
    from_images = SelfPrompt.from_images(vit, embedded, 4, method, seed=3, max_tokens=10_000)
    assert torch.equal(from_images.prompt.detach(), expected)  # 8 images x 16 patches: all kept
    given = torch.randn(4, vit.width)
    assert torch.equal(SelfPrompt(given).prompt.detach(), given) and SelfPrompt(given).prompt is not given


def test_self_prompt_trains_like_shallow_vpt(vit):
    images = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(24) % 3
    source = SelfPrompt.from_images(vit, images[:16], 4, "kmeans", seed=0)
    start = source.prompt.detach().clone()
    model = PromptedClassifier(vit, source, num_classes=3)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"prompt_source.prompt", "head.weight", "head.bias"}
    fit(model, (images[:16], labels[:16]), None, (images[16:], labels[16:]),
        TrainConfig(epochs=2, batch_size=8, selection="last", device="cpu"))
    assert not torch.equal(source.prompt.detach(), start)  # the prompt is tuned, not frozen
