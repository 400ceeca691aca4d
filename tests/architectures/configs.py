"""Tiny, seeded, randomly initialised models for the architecture matrix (no download, < 0.5 s each).

Each builder takes ``attn`` ("eager" / "sdpa") and ``dtype`` and returns a model in eval mode with the head
that ``attnlrp.explain`` explains: causal LM for decoders, sequence classification for encoders. Every model
uses ``tests/tiny.py``'s ``word_tokenizer()`` (its vocabulary is the model's; token ids are below it).

Weights are drawn with ``initializer_range=0.2`` (not the usual 0.02) so that attention is far from uniform
and activations far from linear, and every 1-D parameter (biases, norm weights) gets seeded noise so that
biases are not 0: an operation without a rule, or an absorbing site the ledger does not count, then shows in
the ledger, not in the noise.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import transformers

from tiny import word_tokenizer

#: 4 for the second tested set (``make test-transformers-4.57``), 5 for constraints.txt's
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

VOCAB = len(word_tokenizer())
HIDDEN, INTER, LAYERS, HEADS, KV_HEADS, POSITIONS = 32, 64, 2, 4, 2, 64
INIT = 0.2
SEED = 0

DECODER_PROMPTS = ("paris is the capital of france . lisbon is the capital of", "the quick brown fox jumps over")
ENCODER_PROMPTS = ("good movie and it was not very great", "the cat was bad")
LABELS = dict(num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
              label2id={"negative": 0, "neutral": 1, "positive": 2})


@dataclass(frozen=True)
class Arch:
    name: str
    kind: str  # "decoder" | "encoder" | "encoder-decoder" | "vision"
    model_class: str  # transformers class with the explained head
    config_class: str
    config: Callable[[], dict] = field(repr=False)

    @property
    def attn_implementations(self) -> tuple[str, ...]:
        cls = getattr(transformers, self.model_class)
        return ("eager", "sdpa") if getattr(cls, "_supports_sdpa", False) else ("eager",)

    @property
    def prompts(self) -> tuple[str, str]:
        return DECODER_PROMPTS if self.kind == "decoder" else ENCODER_PROMPTS

    @property
    def is_moe(self) -> bool:
        return "experts" in " ".join(self.config())

    def build(self, attn: str = "eager", dtype: torch.dtype = torch.float64, seed: int = SEED,
              experts: str | None = None):
        """``experts`` picks transformers' MoE experts implementation ("eager", "batched_mm", "grouped_mm");
        the default is "eager" in float64, which ``torch._grouped_mm`` (transformers' CPU default) rejects."""
        if attn not in self.attn_implementations:
            raise ValueError(f"{self.name} does not support attn_implementation={attn!r}")
        extra = {}
        if self.is_moe:
            extra["experts_implementation"] = experts or ("eager" if dtype == torch.float64 else "grouped_mm")
        config = getattr(transformers, self.config_class)(**self.config(), attn_implementation=attn, **extra)
        torch.manual_seed(seed)
        with _bias_free_layer_norm_init(self.name):
            model = getattr(transformers, self.model_class)(config)
        _perturb_vectors(model)
        return model.to(dtype).eval()


@contextlib.contextmanager
def _bias_free_layer_norm_init(name: str):
    """transformers 4.57's ``StableLmPreTrainedModel._init_weights`` zeroes every ``nn.LayerNorm``'s bias, but the
    per-head q/k norms of ``qk_layernorm=True`` have none (AttributeError while building); 5.x skips a missing
    bias. On 4.57 only, and only while a StableLM is built: initialise such a norm as 5.x does (weight 1)."""
    if name != "stablelm" or TRANSFORMERS_MAJOR >= 5:
        yield
        return
    from transformers.models.stablelm.modeling_stablelm import StableLmPreTrainedModel as cls

    original = cls.__dict__["_init_weights"]

    def init(self, module):
        if isinstance(module, torch.nn.LayerNorm) and module.bias is None:
            module.weight.data.fill_(1.0)
        else:
            original(self, module)

    cls._init_weights = init
    try:
        yield
    finally:
        cls._init_weights = original


def _perturb_vectors(model: torch.nn.Module, scale: float = 0.1) -> None:
    """Transformers initialises biases to 0 and norm weights to 1 (0 for Gemma's ``1 + w``): a bias that is 0
    absorbs nothing and would let the ledger pass without counting it. Add seeded noise to every 1-D parameter."""
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            if p.dim() == 1 and p.is_floating_point():
                p.add_(torch.randn_like(p) * scale)


def _ids() -> dict:
    return dict(pad_token_id=0, bos_token_id=2, eos_token_id=2)


def _llama_like(**extra) -> Callable[[], dict]:
    def config() -> dict:
        return dict(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=POSITIONS,
            initializer_range=INIT, tie_word_embeddings=False, **_ids(), **extra,
        )

    return config


def _bert_like(**extra) -> Callable[[], dict]:
    def config() -> dict:
        return dict(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
            num_attention_heads=HEADS, max_position_embeddings=POSITIONS, type_vocab_size=2, pad_token_id=0,
            initializer_range=INIT, **LABELS, **extra,
        )

    return config


_MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1, mlp_only_layers=[])
_SLIDING = ["sliding_attention", "full_attention"]

ARCHITECTURES: dict[str, Arch] = {a.name: a for a in [
    Arch("llama", "decoder", "LlamaForCausalLM", "LlamaConfig", _llama_like()),
    Arch("mistral", "decoder", "MistralForCausalLM", "MistralConfig", _llama_like(sliding_window=8)),
    Arch("mixtral", "decoder", "MixtralForCausalLM", "MixtralConfig",
         _llama_like(num_local_experts=4, num_experts_per_tok=2, sliding_window=None)),
    Arch("qwen2", "decoder", "Qwen2ForCausalLM", "Qwen2Config", _llama_like()),
    Arch("qwen2_moe", "decoder", "Qwen2MoeForCausalLM", "Qwen2MoeConfig",
         _llama_like(**_MOE, shared_expert_intermediate_size=32, norm_topk_prob=False)),
    Arch("qwen3", "decoder", "Qwen3ForCausalLM", "Qwen3Config", _llama_like(head_dim=8)),
    Arch("qwen3_moe", "decoder", "Qwen3MoeForCausalLM", "Qwen3MoeConfig", _llama_like(**_MOE, norm_topk_prob=True)),
    Arch("gemma", "decoder", "GemmaForCausalLM", "GemmaConfig", _llama_like(head_dim=8)),
    Arch("gemma2", "decoder", "Gemma2ForCausalLM", "Gemma2Config",
         _llama_like(head_dim=8, query_pre_attn_scalar=8, sliding_window=8, layer_types=_SLIDING,
                     attn_logit_softcapping=50.0, final_logit_softcapping=30.0)),
    Arch("gemma3_text", "decoder", "Gemma3ForCausalLM", "Gemma3TextConfig",
         _llama_like(head_dim=8, query_pre_attn_scalar=8, sliding_window=8, layer_types=_SLIDING)),
    Arch("phi", "decoder", "PhiForCausalLM", "PhiConfig", _llama_like()),
    Arch("phi3", "decoder", "Phi3ForCausalLM", "Phi3Config", _llama_like()),
    Arch("olmo2", "decoder", "Olmo2ForCausalLM", "Olmo2Config", _llama_like()),
    Arch("stablelm", "decoder", "StableLmForCausalLM", "StableLmConfig", _llama_like(qk_layernorm=True)),
    Arch("starcoder2", "decoder", "Starcoder2ForCausalLM", "Starcoder2Config", _llama_like(sliding_window=8)),
    Arch("gpt2", "decoder", "GPT2LMHeadModel", "GPT2Config", lambda: dict(
        vocab_size=VOCAB, n_embd=HIDDEN, n_inner=INTER, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS,
        initializer_range=INIT, **_ids())),
    Arch("gpt_neox", "decoder", "GPTNeoXForCausalLM", "GPTNeoXConfig", lambda: dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, max_position_embeddings=POSITIONS, initializer_range=INIT,
        use_parallel_residual=True, **_ids())),
    Arch("gptj", "decoder", "GPTJForCausalLM", "GPTJConfig", lambda: dict(
        vocab_size=VOCAB, n_embd=HIDDEN, n_inner=INTER, n_layer=LAYERS, n_head=HEADS, rotary_dim=4,
        n_positions=POSITIONS, initializer_range=INIT, **_ids())),
    Arch("falcon", "decoder", "FalconForCausalLM", "FalconConfig", lambda: dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        max_position_embeddings=POSITIONS, initializer_range=INIT, alibi=False, bias=True, **_ids())),
    Arch("falcon_alibi", "decoder", "FalconForCausalLM", "FalconConfig", lambda: dict(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        max_position_embeddings=POSITIONS, initializer_range=INIT, alibi=True, bias=True, **_ids())),
    Arch("bert", "encoder", "BertForSequenceClassification", "BertConfig", _bert_like()),
    Arch("roberta", "encoder", "RobertaForSequenceClassification", "RobertaConfig", _bert_like()),
    Arch("distilbert", "encoder", "DistilBertForSequenceClassification", "DistilBertConfig", lambda: dict(
        vocab_size=VOCAB, dim=HIDDEN, hidden_dim=INTER, n_layers=LAYERS, n_heads=HEADS,
        max_position_embeddings=POSITIONS, pad_token_id=0, initializer_range=INIT, **LABELS)),
    Arch("electra", "encoder", "ElectraForSequenceClassification", "ElectraConfig",
         _bert_like(embedding_size=16)),
]}

#: Encoder-decoders (tests/architectures/test_encoder_decoder.py) and vision (images need a pixel entry point).
LATER: dict[str, Arch] = {a.name: a for a in [
    Arch("t5", "encoder-decoder", "T5ForConditionalGeneration", "T5Config", lambda: dict(
        vocab_size=VOCAB, d_model=HIDDEN, d_kv=8, d_ff=INTER, num_layers=LAYERS, num_decoder_layers=LAYERS,
        num_heads=HEADS, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=5,
        decoder_start_token_id=0)),
    Arch("bart", "encoder-decoder", "BartForConditionalGeneration", "BartConfig", lambda: dict(
        vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=INTER,
        decoder_ffn_dim=INTER, max_position_embeddings=POSITIONS, init_std=INIT, pad_token_id=0,
        bos_token_id=2, eos_token_id=5, decoder_start_token_id=2, forced_eos_token_id=None)),
    Arch("vit", "vision", "ViTForImageClassification", "ViTConfig", lambda: dict(
        hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        image_size=32, patch_size=8, num_channels=3, initializer_range=INIT, **LABELS)),
]}

DECODERS = [n for n, a in ARCHITECTURES.items() if a.kind == "decoder"]
ENCODERS = [n for n, a in ARCHITECTURES.items() if a.kind == "encoder"]


def build(name: str, attn: str = "eager", dtype: torch.dtype = torch.float64, experts: str | None = None):
    """The tiny model ``name`` (from ``ARCHITECTURES`` or ``LATER``)."""
    arch = ARCHITECTURES.get(name) or LATER[name]
    return arch.build(attn, dtype, experts=experts)
