"""Model loading: a CLIPModel folder with its tokenizer, the tiny model, and refusals."""

from __future__ import annotations

import json

import pytest
import torch

from mamf.models import load_model
from mamf.system.errors import MamfError


def save_clip_folder(path):
    """A tiny CLIPModel plus a real word-level tokenizer, saved as transformers would."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "a", "photo", "of", "red", "green", "blue", "."]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A </s>",
                                            special_tokens=[("<s>", 1), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
    config = CLIPConfig(
        text_config={"vocab_size": len(words), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 16, "pad_token_id": 0, "bos_token_id": 1,
                     "eos_token_id": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.2, 0.2]}))
    return path


def test_a_clip_folder_loads_with_its_tokenizer_and_statistics(tmp_path):
    folder = save_clip_folder(tmp_path / "clip")
    model = load_model(str(folder))
    assert model.image_size == 32 and model.image_mean == (0.5, 0.4, 0.3)
    tokens = model.tokenize(["a photo of red .", "blue"])
    texts = model.encode_texts(tokens)
    images = model.encode_images(model.preprocess(torch.zeros(3, 32, 32, 3, dtype=torch.uint8)))
    assert texts.shape == (2, 16) and images.shape == (3, 16)
    assert torch.isfinite(texts).all() and torch.isfinite(images).all()


def test_a_folder_that_is_not_clip_is_refused(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(MamfError, match="holds a 'bert' model, not one of clip, siglip"):
        load_model(str(tmp_path / "bert"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MamfError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_a_hub_id_without_network_is_one_clear_error():
    with pytest.raises(MamfError, match="cannot load model"):
        load_model("openai/clip-vit-base-patch32")


def test_tiny_random_clip_is_seeded_and_random_heads_differ():
    a, b = load_model("tiny-random-clip"), load_model("tiny-random-clip")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    before = a.clip.visual_projection.weight.detach().clone()
    a.reset_heads(torch.Generator().manual_seed(1))
    assert not torch.equal(before, a.clip.visual_projection.weight)


def test_effnet_weights_are_unpickled_once_then_read_as_safetensors(tmp_path, monkeypatch):
    """The shipped pickle is read once (weights_only) and converted into the cache; a later
    build reads the safetensors file and never calls torch.load."""
    import torch

    from mamf.data.cache import cache_root
    from mamf.models.effnet_minilm import effnet_state

    pickle = tmp_path / "efficientnet-lite0.pth"
    weights = {"a.weight": torch.randn(3, 4), "b.bias": torch.arange(5.0)}
    torch.save(weights, pickle)
    first = effnet_state(pickle)
    (converted,) = (cache_root() / "weights").glob("efficientnet-lite0-*.safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called again")

    monkeypatch.setattr(torch, "load", refuse)
    again = effnet_state(pickle)
    assert set(again) == set(weights) and converted.is_file()
    assert all(torch.equal(again[k], weights[k]) and torch.equal(first[k], weights[k])
               for k in weights)


def _bytes_reference(texts: list[str], fixed: bool = False) -> torch.Tensor:
    """The tiny models' ids by their definition: [BOS] UTF-8 bytes [EOS], cut at MAX_LENGTH,
    padded with PAD (to the longest, or to MAX_LENGTH)."""
    from mamf.models.tiny import BOS, EOS, MAX_LENGTH, PAD

    rows = [[BOS, *t.encode("utf-8")[: MAX_LENGTH - 2], EOS] for t in texts]
    width = MAX_LENGTH if fixed else max(len(r) for r in rows)
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows])


@pytest.mark.parametrize("name", ["tiny-random-clip", "tiny-random-siglip"])
def test_the_tiny_tokenizer_is_a_transformers_tokenizer_giving_the_byte_ids(name, tmp_path):
    """A transformers tokenizer (so an export carries it) with exactly the bytes' ids: a
    special token's spelling in a prompt, long, empty and non-ASCII prompts included."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from transformers import AutoTokenizer

    model = load_model(name)
    fixed = name.endswith("siglip")
    texts = ["A photo of a café.", "x" * 100, " two  spaces\tand a tab\n", "日本語 😀", "",
             "<|endoftext|> <|pad|> <|startoftext|>"]
    assert torch.equal(model.tokenize(texts)["input_ids"], _bytes_reference(texts, fixed))

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.text(max_size=60), min_size=1, max_size=4))
    def same(batch):
        assert torch.equal(model.tokenize(batch)["input_ids"], _bytes_reference(batch, fixed))

    same()
    model.tokenizer.tokenizer.save_pretrained(str(tmp_path))
    again = AutoTokenizer.from_pretrained(str(tmp_path))
    got = again(texts, padding="max_length" if fixed else True, truncation=True, max_length=48,
                return_tensors="pt")["input_ids"]
    assert torch.equal(got, _bytes_reference(texts, fixed))


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_a_model_folder_without_a_tokenizer_is_refused_not_given_a_placeholder(tmp_path, family):
    """transformers makes an empty-vocabulary tokenizer for such a folder: every prompt the same
    tokens, zero-shot at chance, no warning. mamf refuses it in one line."""
    folder = tmp_path / family
    load_model(f"tiny-random-{family}").transformers_model().save_pretrained(str(folder))
    with pytest.raises(MamfError, match="no tokenizer files") as e:
        load_model(str(folder))
    assert "\n" not in str(e.value)


def test_effnet_minilms_class_embeddings_are_kept_and_read_back_bit_for_bit(monkeypatch):
    """Embedding the 1000 ImageNet prompts is most of an effnet-minilm build: the first build
    keeps them in the cache, a later one (same text weights, prompts, torch, threads) reads
    them; other text weights or another thread count compute their own."""
    from mamf.models import effnet_minilm

    calls = []

    def embed(text_model, tokenizer, names):
        calls.append(len(names))
        return torch.randn(len(names), 4, generator=torch.Generator().manual_seed(len(calls)))

    monkeypatch.setattr(effnet_minilm, "class_prompt_embeddings", embed)
    tower = torch.nn.Linear(3, 4)
    names = ["tench", "goldfish", "great white shark"]
    first = effnet_minilm.cached_class_embeddings(tower, None, names)
    again = effnet_minilm.cached_class_embeddings(tower, None, names)
    assert len(calls) == 1 and torch.equal(first, again)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        effnet_minilm.cached_class_embeddings(tower, None, names)
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        tower.weight.add_(1.0)
    effnet_minilm.cached_class_embeddings(tower, None, names)
    assert len(calls) == 3
