import numpy as np
import pytest
import torch
from torch import nn

from cmpt.assets import AssetError
from cmpt.backbones import load_text_backbone, load_vision_backbone, record_attention


@pytest.fixture(scope="module")
def vit():
    return load_vision_backbone("tiny-vit", 32)


@pytest.fixture(scope="module")
def bert():
    return load_text_backbone("tiny-bert", max_length=16)


def _images(n=3, size=32, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", ["before_cls", "after_cls"])
def test_vision_gradients_reach_the_prompt_and_nothing_else(vit, layout):
    vit.layout = layout
    prompt = torch.randn(4, vit.width, requires_grad=True)
    # (a plain .sum() of a LayerNorm output has zero gradient: weight it)
    (vit(_images(), prompt=prompt) * torch.randn(vit.width)).sum().backward()
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in vit.parameters())
    assert not any(p.requires_grad for p in vit.parameters())
    vit.layout = "before_cls"


@pytest.mark.parametrize("layout,index", [("before_cls", 5), ("after_cls", 0)])
def test_readout_is_the_cls_token_not_a_prompt_token(layout, index):
    """With the blocks removed, the CLS output is norm(cls_token + pos[0]) whatever the prompt.

    Reading any prompt slot instead would return norm(prompt row), which differs.
    """
    model = load_vision_backbone("tiny-vit", 32, layout=layout)
    model.vit.blocks = nn.Sequential()
    prompt = torch.randn(5, model.width) * 10
    assert model.readout_index(5) == index
    out = model(_images(2), prompt=prompt)
    cls = model.vit.norm(model.vit.cls_token[0, 0] + model.vit.pos_embed[0, 0])
    assert torch.allclose(out, cls.expand_as(out), atol=1e-5)
    prompt_rows = model.vit.norm(prompt)
    assert not any(torch.allclose(out[0], row, atol=1e-3) for row in prompt_rows)


def test_prompt_slots_sit_where_the_layout_says(vit):
    tokens = vit.embed(_images(1))
    prompt = torch.full((3, vit.width), 7.0)
    for layout, slots in (("before_cls", [0, 1, 2]), ("after_cls", [1, 2, 3])):
        vit.layout = layout
        seq = vit.insert(tokens, prompt)
        assert seq.shape[1] == tokens.shape[1] + 3
        assert [i for i in range(seq.shape[1]) if torch.all(seq[0, i] == 7.0)] == slots
    vit.layout = "before_cls"


def test_shallow_and_deep_prompts_change_the_output(vit):
    x = _images()
    torch.manual_seed(1)
    base = vit(x)
    shallow = vit(x, prompt=torch.randn(4, vit.width))
    deep_prompts = torch.randn(vit.depth, 4, vit.width)
    deep = vit(x, deep_prompts=deep_prompts)
    same_first = vit(x, prompt=deep_prompts[0])
    assert not torch.allclose(base, shallow)
    assert not torch.allclose(deep, same_first), "deep prompts must replace the slots before later blocks"
    with pytest.raises(ValueError, match="deep prompts must be"):
        vit(x, deep_prompts=torch.randn(vit.depth + 1, 4, vit.width))


def test_per_example_prompts_match_a_loop(vit):
    x = _images(3)
    prompts = torch.randn(3, 4, vit.width)
    batched = vit(x, prompt=prompts)
    looped = torch.cat([vit(x[i:i + 1], prompt=prompts[i]) for i in range(3)])
    assert torch.allclose(batched, looped, atol=1e-5)


def test_wrong_prompt_width_is_refused_clearly(vit):
    with pytest.raises(ValueError, match="prompt width 48 does not fit vision backbone 'tiny-vit'.*projection"):
        vit(_images(), prompt=torch.randn(4, 48))


def test_recorded_attention_is_a_distribution_and_reproduces_the_block(vit):
    x = _images(2)
    prompt = torch.randn(4, vit.width)
    fused_before = [b.attn.fused_attn for b in vit.vit.blocks]
    with torch.no_grad(), record_attention(vit) as maps:
        out = vit(x, prompt=prompt)
    assert [b.attn.fused_attn for b in vit.vit.blocks] == fused_before
    assert len(maps) == vit.depth
    T = 1 + vit.num_patches + 4
    assert maps[0].shape == (2, vit.vit.blocks[0].attn.num_heads, T, T)
    for m in maps:
        assert torch.allclose(m.sum(-1), torch.ones_like(m.sum(-1)), atol=1e-5)
    # re-apply block 0's recorded attention to its values: same attention output as the block
    with torch.no_grad():
        tokens = vit.vit.norm_pre(vit.insert(vit.embed(x), prompt))
        attn = vit.vit.blocks[0].attn
        h = vit.vit.blocks[0].norm1(tokens)
        qkv = attn.qkv(h).reshape(2, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        mixed = (maps[0] @ qkv[2]).transpose(1, 2).reshape(2, T, -1)
        assert torch.allclose(attn.proj(mixed), attn(h), atol=1e-5)
        assert torch.allclose(vit(x, prompt=prompt), out, atol=1e-6)


def test_backbone_stays_in_eval_mode(vit):
    vit.train()
    assert not vit.vit.training
    assert vit.training


def test_unknown_backbones_list_valid_names():
    with pytest.raises(ValueError, match="unknown vision backbone 'resnet'.*dinov2-s14"):
        load_vision_backbone("resnet", 32)
    with pytest.raises(ValueError, match="unknown text backbone 'gpt'.*minilm-l6"):
        load_text_backbone("gpt")
    with pytest.raises(ValueError, match="multiple of 14"):
        load_vision_backbone("dinov2-s14", 100)


def test_text_gradients_reach_the_prompt_only_and_readout_follows_it(bert):
    batch = bert.tokenize(["w1 w2 w3", "w4"])
    prompt = torch.randn(3, bert.width, requires_grad=True)
    out = bert(**batch, prompt=prompt)
    (out * torch.randn(bert.width)).sum().backward()
    assert prompt.grad.abs().sum() > 0
    assert all(p.grad is None for p in bert.parameters())
    assert bert.readout_index(3) == 3
    ids = batch["input_ids"]
    assert bert.tokenizer.convert_ids_to_tokens(ids[0, :1].tolist()) == ["[CLS]"]
    # the read-out is the hidden state of [CLS], found after the 3 prompt positions
    embeds = torch.cat([prompt.detach().expand(2, -1, -1), bert.model.get_input_embeddings()(ids)], 1)
    mask = torch.cat([torch.ones(2, 3, dtype=torch.long), batch["attention_mask"]], 1)
    hidden = bert.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    assert torch.allclose(out.detach(), hidden[:, 3], atol=1e-6)


def test_text_padding_does_not_change_features(bert):
    prompt = torch.randn(2, bert.width)
    alone = bert(**bert.tokenize(["w5 w6"]), prompt=prompt)
    padded = bert(**bert.tokenize(["w5 w6", "w7 w8 w9 w10 w11 w12"]), prompt=prompt)[:1]
    assert torch.allclose(alone, padded, atol=1e-5)
    with pytest.raises(ValueError, match="prompt width 7 does not fit text backbone"):
        bert(**bert.tokenize(["w1"]), prompt=torch.randn(2, 7))


def test_paper_text_backbone_offline_fails_with_a_clear_message():
    with pytest.raises(AssetError, match="RoBERTa-base.*roberta-base@DIR"):
        load_text_backbone("roberta-base")


def test_paper_text_backbone_loads_a_local_copy(tmp_path):
    """The paper path (RobertaModel via AutoModel) on a tiny random model of the same class."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "good", "bad"])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", mask_token="<mask>")
    model = RobertaModel(RobertaConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                                       pad_token_id=1))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = load_text_backbone(f"roberta-base@{tmp_path}")
    assert type(enc.model).__name__ == "RobertaModel" and enc.width == 16
    feats = enc(**enc.tokenize(["good", "bad bad"]), prompt=torch.randn(4, 16))
    assert feats.shape == (2, 16) and torch.isfinite(feats).all()


def test_paper_vision_backbone_offline_and_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    with pytest.raises(AssetError, match="vit-b16-in21k@/path/to/model.safetensors"):
        load_vision_backbone("vit-b16-in21k", 224)
    with pytest.raises(AssetError, match="does not exist"):
        load_vision_backbone(f"vit-b16-in21k@{tmp_path}/missing.safetensors", 224)
    # a randomly initialised ViT-B/16 of the very class the paper uses, saved as a local weights file
    torch.manual_seed(0)
    reference = timm.create_model("vit_base_patch16_224.orig_in21k", pretrained=False, num_classes=0)
    weights = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(weights))
    model = load_vision_backbone(f"vit-b16-in21k@{weights}", 224)
    assert model.width == 768 and model.depth == 12 and model.num_patches == 196
    assert model.preprocess.mean == (0.5, 0.5, 0.5)  # the in21k checkpoint's own normalisation
    assert torch.equal(model.vit.pos_embed, reference.pos_embed)


@pytest.mark.slow
def test_default_dinov2_matches_onnxruntime_on_a_real_image():
    import onnx
    import onnxruntime as ort
    from skimage import data

    from cmpt.backbones.dinov2_onnx import backbone_output_name, onnx_path
    from cmpt.data.image_tasks import to_tensor

    model = load_vision_backbone("dinov2-s14", 224)
    x = to_tensor(data.astronaut()[None], model.preprocess)
    path = onnx_path()
    name = backbone_output_name(path)
    graph = onnx.load(str(path))
    graph.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = session.run([name], {"input_image": x.numpy()})[0]
    with torch.no_grad():
        ours = model.forward_tokens(x).numpy()
    assert ours.shape == reference.shape == (1, 257, 384)
    assert np.abs(ours - reference).max() <= 1e-4


@pytest.mark.slow
def test_default_minilm_loads_offline():
    enc = load_text_backbone("minilm-l6")
    assert type(enc.model).__name__ == "BertModel" and enc.width == 384
    assert enc.model.config.num_hidden_layers == 6
    feats = enc(**enc.tokenize(["a fine film", "an awful film"]))
    sim = torch.nn.functional.cosine_similarity(feats[0], feats[1], dim=0)
    assert 0.0 < sim < 0.9999  # real, distinct features


def _tiny_roberta_folder(path, with_mlm_head=False):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForMaskedLM, RobertaModel

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", "good", "bad", "film"])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import processors

    core.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", mask_token="<mask>")
    config = RobertaConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=64, pad_token_id=1)
    torch.manual_seed(0)
    (RobertaForMaskedLM if with_mlm_head else RobertaModel)(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_masked_lm_verbaliser_readout(tmp_path):
    """Su et al.'s read-out: a mask before </s>, scored by the model's own frozen MLM head."""
    from cmpt.source_training import TextPromptClassifier

    enc = load_text_backbone(f"roberta-base@{_tiny_roberta_folder(tmp_path, True)}", readout="mask", max_length=5)
    batch = enc.tokenize(["good film", "bad bad bad bad bad"])  # the second is truncated, its mask kept
    ids = batch["input_ids"]
    for row, mask in zip(ids, batch["attention_mask"]):
        real = row[mask.bool()].tolist()
        assert real[-2:] == [enc.tokenizer.mask_token_id, 2] and real[0] == 0
    assert not any(p.requires_grad for p in enc.parameters())
    clf = TextPromptClassifier(enc, 3, 2, label_words=["bad", "good"])
    logits = clf(batch)
    assert logits.shape == (2, 2)
    (logits * torch.randn(2, 2)).sum().backward()
    assert [n for n, p in clf.named_parameters() if p.requires_grad] == ["prompt"]
    assert clf.prompt.grad.abs().sum() > 0
    # the scores are the MLM logits of the label words at the mask position
    full = enc.mlm_head(enc(**batch, prompt=clf.prompt))
    assert torch.allclose(logits, full[:, [5, 6]][:, [1, 0]], atol=1e-6)
    with pytest.raises(ValueError, match="ships without a masked-LM head"):
        load_text_backbone("minilm-l6", readout="mask")
