"""Hugging Face models as users bring them (tiny ones built from configs, nothing downloaded):
BERT with an attention mask, GPT-2's per-token logits, ViT on pixels. Every method against the
float64 brute force (`ntkit.reference`), 1e-8 relative to the largest entry.

transformers' models branch on the attention mask's values (`.item()`), which vmap cannot
batch: the engine falls back to one sample at a time (a warning says so) and stays exact."""

from __future__ import annotations

import warnings

import pytest
import torch

import ntkit
from ntkit.reference import ntk_reference

transformers = pytest.importorskip("transformers")
D = torch.float64
METHODS = ["jacobian", "ntk-vp", "structured", "auto"]


def _close(k, r):
    assert k.shape == r.shape
    assert float((k - r).abs().max()) <= 1e-8 * float(r.abs().max())


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _tokens(n: int, vocab: int, t: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[1, 3:] = 0
    mask[n - 1, 2:] = 0
    return {"input_ids": torch.randint(0, vocab, (n, t), generator=g), "attention_mask": mask}


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=16, max_position_embeddings=16, num_labels=3)
    return transformers.BertForSequenceClassification(cfg).to(D).eval()


@pytest.mark.parametrize("method", METHODS)
def test_bert_with_attention_mask(bert, method):
    x1, x2 = _tokens(4, 30), _tokens(2, 30, seed=1)
    for output in ("full", "trace"):
        _close(_quiet(lambda: ntkit.ntk(bert, x1, x2, method=method, output=output)),
               ntk_reference(bert, x1, x2, output=output))


def test_bert_mask_changes_the_kernel(bert):
    x = _tokens(3, 30)
    unmasked = dict(x, attention_mask=torch.ones_like(x["attention_mask"]))
    k, k_unmasked = (_quiet(lambda v=v: ntkit.ntk(bert, v, output="trace")) for v in (x, unmasked))
    _close(k_unmasked, ntk_reference(bert, unmasked, output="trace"))
    scale = float(k.abs().max())
    assert abs(float(k[0, 0] - k_unmasked[0, 0])) <= 1e-12 * scale  # sample 0 had no padding
    assert abs(float(k[2, 2] - k_unmasked[2, 2])) > 1e-7 * scale  # sample 2's padding now counts (float64 noise ~1e-15)


@pytest.mark.parametrize("method", METHODS)
def test_gpt2_per_token_kernel(method):
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=12, n_embd=8, n_layer=1, n_head=2, n_positions=8,
                                  bos_token_id=0, eos_token_id=0)
    gpt = transformers.GPT2LMHeadModel(cfg).to(D).eval()
    x = _tokens(3, 12, t=4)
    k = _quiet(lambda: ntkit.ntk(gpt, x, method=method, diagonal_axes=1, trace_axes=-1))
    assert k.shape == (3, 3, 4)  # one kernel per token position, traced over the vocabulary
    _close(k, ntk_reference(gpt, x, diagonal_axes=1, trace_axes=-1))


@pytest.mark.parametrize("method", METHODS)
def test_vit_on_pixels(method):
    torch.manual_seed(2)
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=8, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=16, num_labels=2)
    vit = transformers.ViTForImageClassification(cfg).to(D).eval()
    px = torch.randn(3, 3, 8, 8, dtype=D)
    _close(_quiet(lambda: ntkit.ntk(vit, px, px[:2], method=method)), ntk_reference(vit, px, px[:2]))
    _close(_quiet(lambda: ntkit.ntk(vit, {"pixel_values": px}, method=method, output="trace")),
           ntk_reference(vit, px, output="trace"))
