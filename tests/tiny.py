"""Tiny, seeded, randomly initialised models and a word-level tokenizer: no download, milliseconds to build."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = (
    "the a of is capital city paris france berlin germany rome italy lisbon portugal madrid spain "
    "quick brown fox jumps over lazy dog cat good bad movie great terrible and it was not very"
).split()


def word_tokenizer(bos: bool = True) -> PreTrainedTokenizerFast:
    """A fast word-level tokenizer (with offsets) over a small vocabulary; unknown words map to [UNK]."""
    specials = ["[PAD]", "[UNK]", "[BOS]", "[MASK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + [".", ",", "<", ">", "/", "(", ")", "script", "alert", "1"])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    from tokenizers import processors

    if bos:
        core.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", mask_token="[MASK]",
        cls_token="[CLS]", sep_token="[SEP]",
    )
    tok.model_max_length = 64
    return tok


def seeded(build, seed: int = 0):
    torch.manual_seed(seed)
    model = build()
    return model.eval()


def tiny_llama(dtype=torch.float32, attn="sdpa", **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(word_tokenizer()), max_position_embeddings=64, pad_token_id=0, bos_token_id=2,
        eos_token_id=2, attn_implementation=attn, **overrides,
    )
    return seeded(lambda: LlamaForCausalLM(config)).to(dtype)


def tiny_bert(head: str = "seq-cls", attn="sdpa", dtype=torch.float32):
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    config = BertConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=len(word_tokenizer()), max_position_embeddings=64, type_vocab_size=2, pad_token_id=0,
        num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
        label2id={"negative": 0, "neutral": 1, "positive": 2}, attn_implementation=attn,
    )
    cls = BertForSequenceClassification if head == "seq-cls" else BertForMaskedLM
    return seeded(lambda: cls(config)).to(dtype)
