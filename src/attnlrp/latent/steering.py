"""Steering: switch off, scale or set chosen MLP neurons while a model runs, reversibly.

A neuron is ``(layer, index)`` of the input of a layer's MLP output projection (the module that
:func:`attnlrp.latent.layer_sites` finds), i.e. the same units whose relevance ``Explanation.latents`` reports.
Inside ``with steer(model, off=[(3, 17)], scale={(5, 2): 2.0}, set={(7, 9): 0.0}):`` every forward pass of that
model instance — single or batched inputs, ``model.generate`` with or without a KV cache, with or without
gradients — sees the changed neurons at every token position. The change is a forward pre-hook on each affected
projection; the hooks are removed on exit, also when the block raises, so the model is exactly as before.

>>> with steer(model, off=[(3, 17)]):
...     model.generate(ids, max_new_tokens=10)
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from ..errors import ExplainError
from ..models.adapter import ModelAdapter, bos_policy, prepare_prompt

Neuron = tuple[int, int]


__all__ = ["Comparison", "Neuron", "NeuronEdit", "Outcome", "Steering", "SteeringError", "build_edits", "compare",
           "parse_neuron", "parse_neuron_value", "steer"]


class SteeringError(ExplainError):
    """A steering request that cannot be applied as given; the message says what to change."""


@dataclass(frozen=True)
class NeuronEdit:
    """One neuron's change: ``mode`` "off" (set to 0), "scale" (multiply by ``value``) or "set" (to ``value``)."""

    layer: int
    neuron: int
    mode: str
    value: float

    def describe(self) -> str:
        """The edit in short: ``"3:17 off"``, ``"3:17 × 2"``, ``"3:17 = 0.5"``."""
        if self.mode == "off":
            return f"{self.layer}:{self.neuron} off"
        verb = "×" if self.mode == "scale" else "="
        return f"{self.layer}:{self.neuron} {verb} {self.value:g}"

    def to_dict(self) -> dict[str, Any]:
        """The edit as plain JSON-ready values."""
        return {"layer": self.layer, "neuron": self.neuron, "mode": self.mode, "value": self.value}


# ------------------------------------------------------------------------------------------- CLI syntax
_NEURON = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")


def parse_neuron(text: str) -> Neuron:
    """``"3:17"`` → ``(3, 17)`` (layer 3, neuron 17); anything else is a :class:`SteeringError`."""
    match = _NEURON.fullmatch(text)
    if match is None:
        raise SteeringError(f"bad neuron {text!r}: write LAYER:NEURON with non-negative integers, e.g. 3:17")
    return int(match.group(1)), int(match.group(2))


def parse_neuron_value(text: str) -> tuple[Neuron, float]:
    """``"3:17=0.5"`` → ``((3, 17), 0.5)``; the value must be a finite number."""
    neuron_text, sep, value_text = text.partition("=")
    if not sep:
        raise SteeringError(f"bad neuron value {text!r}: write LAYER:NEURON=NUMBER, e.g. 3:17=0.5")
    neuron = parse_neuron(neuron_text)
    try:
        value = float(value_text)
    except ValueError:
        raise SteeringError(f"bad number {value_text.strip()!r} in {text!r}: write LAYER:NEURON=NUMBER, "
                            "e.g. 3:17=0.5") from None
    if not math.isfinite(value):
        raise SteeringError(f"{text!r}: the value must be a finite number")
    return neuron, value


# ------------------------------------------------------------------------------------------- validation
def _as_neuron(item: Any) -> Neuron:
    """A ``(layer, neuron)`` pair of integers (a ``"L:N"`` string is accepted too)."""
    if isinstance(item, str):
        return parse_neuron(item)
    try:
        layer, neuron = item
        if isinstance(layer, bool) or isinstance(neuron, bool):
            raise TypeError
        return operator.index(layer), operator.index(neuron)
    except (TypeError, ValueError):
        raise SteeringError(f"a neuron is a (layer, neuron) pair of integers, not {item!r}") from None


def _as_value(value: Any, what: str, neuron: Neuron) -> float:
    if isinstance(value, bool):
        raise SteeringError(f"the {what} for neuron {neuron[0]}:{neuron[1]} must be a number, not {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SteeringError(f"the {what} for neuron {neuron[0]}:{neuron[1]} must be a number, not {value!r}") from None
    if not math.isfinite(number):
        raise SteeringError(f"the {what} for neuron {neuron[0]}:{neuron[1]} must be finite, not {number}")
    return number


def build_edits(off: Iterable[Any] | None = (), scale: Mapping[Any, Any] | None = None,
                set: Mapping[Any, Any] | None = None) -> list[NeuronEdit]:  # noqa: A002 - the user-facing name
    """The requested edits in a fixed order, each neuron at most once (duplicates are an error, not a guess)."""
    off = () if off is None else off
    if isinstance(off, str) or (isinstance(off, tuple) and len(off) == 2 and all(isinstance(v, int) for v in off)):
        raise SteeringError("off takes a list of neurons, e.g. off=[(3, 17)], not a single neuron")
    if not isinstance(off, Iterable):
        raise SteeringError(f"off takes a list of neurons, e.g. off=[(3, 17)], not {type(off).__name__}")
    edits: list[NeuronEdit] = []
    for item in off:
        layer, neuron = _as_neuron(item)
        edits.append(NeuronEdit(layer, neuron, "off", 0.0))
    for mode, mapping, what in (("scale", scale, "scale factor"), ("set", set, "value")):
        if mapping is None:
            continue
        if not isinstance(mapping, Mapping):
            raise SteeringError(f"{mode} takes a mapping {{(layer, neuron): number}}, not {type(mapping).__name__}")
        for key, value in mapping.items():
            where = _as_neuron(key)
            edits.append(NeuronEdit(where[0], where[1], mode, _as_value(value, what, where)))
    seen: dict[Neuron, str] = {}
    for edit in edits:
        key = (edit.layer, edit.neuron)
        if key in seen:
            raise SteeringError(f"neuron {edit.layer}:{edit.neuron} is given twice ({seen[key]} and {edit.mode}); "
                                "give each neuron once")
        seen[key] = edit.mode
    return edits


def _check_ranges(edits: list[NeuronEdit], widths: list[int]) -> None:
    for edit in edits:
        if not 0 <= edit.layer < len(widths):
            raise SteeringError(f"layer {edit.layer} does not exist; the model has layers 0..{len(widths) - 1}")
        if not 0 <= edit.neuron < widths[edit.layer]:
            raise SteeringError(f"neuron {edit.neuron} does not exist in layer {edit.layer}; its MLP has neurons "
                                f"0..{widths[edit.layer] - 1}")


# ------------------------------------------------------------------------------------------- the hook
class _LayerEdit:
    """The edits of one layer as index tensors, applied out of place to the projection's input."""

    def __init__(self, edits: list[NeuronEdit]) -> None:
        scaled = [e for e in edits if e.mode in ("off", "scale")]
        fixed = [e for e in edits if e.mode == "set"]
        self._scale_index = torch.tensor([e.neuron for e in scaled], dtype=torch.long)
        self._scale_value = torch.tensor([e.value for e in scaled], dtype=torch.float64)
        self._set_index = torch.tensor([e.neuron for e in fixed], dtype=torch.long)
        self._set_value = torch.tensor([e.value for e in fixed], dtype=torch.float64)
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    def _tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = (
                self._scale_index.to(like.device), self._scale_value.to(like.device, like.dtype),
                self._set_index.to(like.device), self._set_value.to(like.device, like.dtype),
            )
        return self._cache[key]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        scale_index, scale_value, set_index, set_value = self._tensors(x)
        x = x.clone()  # never in place: the caller's tensor may be saved for backward or reused
        if len(scale_index):
            # "off" is a factor of 0 written as an assignment, so a non-finite activation still becomes 0
            x[..., scale_index] = torch.where(scale_value == 0, torch.zeros_like(scale_value),
                                              x[..., scale_index] * scale_value)
        if len(set_index):
            x[..., set_index] = set_value.expand_as(x[..., set_index])
        return x

    def hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if args and isinstance(args[0], torch.Tensor):
            return (self.apply(args[0]), *args[1:]), kwargs
        if "input" in kwargs and isinstance(kwargs["input"], torch.Tensor):
            return args, {**kwargs, "input": self.apply(kwargs["input"])}
        raise SteeringError(f"{type(module).__name__} was called without a tensor input; cannot steer it")


class Steering:
    """A reversible set of neuron edits on one model instance; enter it with ``with``.

    One object may be entered again after it has exited, but not while it is active.
    """

    def __init__(self, model: nn.Module, edits: list[NeuronEdit]) -> None:
        sites = ModelAdapter.of(model).layer_sites()
        _check_ranges(edits, [site.num_neurons for site in sites])
        self.model = model
        self.edits = list(edits)
        self._modules = {site.index: site.mlp_output for site in sites}
        self._handles: list[Any] = []

    @property
    def neurons(self) -> list[Neuron]:
        """The edited neurons as ``(layer, neuron)`` pairs, in the order of the edits."""
        return [(e.layer, e.neuron) for e in self.edits]

    @property
    def active(self) -> bool:
        """Whether the edits are applied now (inside the ``with`` block)."""
        return bool(self._handles)

    def describe(self) -> str:
        """The edits in short, comma-separated (``"no neuron changed"`` for none)."""
        return ", ".join(e.describe() for e in self.edits) or "no neuron changed"

    def __enter__(self) -> "Steering":
        if self._handles:
            raise SteeringError("this steering is already active; leave it before entering it again")
        by_layer: dict[int, list[NeuronEdit]] = {}
        for edit in self.edits:
            by_layer.setdefault(edit.layer, []).append(edit)
        try:
            for layer, edits in sorted(by_layer.items()):
                hook = _LayerEdit(edits).hook
                # first in line, so observers (the latent recorder, user hooks) see the steered neurons
                self._handles.append(
                    self._modules[layer].register_forward_pre_hook(hook, with_kwargs=True, prepend=True))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __repr__(self) -> str:
        return f"Steering({self.describe()})"


def steer(model: nn.Module, *, off: Iterable[Any] | None = (), scale: Mapping[Any, Any] | None = None,
          set: Mapping[Any, Any] | None = None) -> Steering:  # noqa: A002 - the user-facing name
    """Switch ``off`` neurons (set them to 0), ``scale`` them by a factor, or ``set`` them to a value.

    Neurons are ``(layer, index)`` pairs (or ``"L:N"`` strings) of the MLP neurons that ``layer_sites`` finds.
    Use as a context manager; the edits apply to every forward pass of ``model`` inside the block.
    """
    return Steering(model, build_edits(off, scale, set))


# ------------------------------------------------------------------------------------------- before / after
@dataclass(frozen=True)
class Outcome:
    """One run of a prompt: the predicted next token, the reference token's logit and log-probability (the token
    predicted *without* steering), and the greedy continuation."""

    token: str
    token_id: int
    logit: float
    log_prob: float
    generated: str
    generated_ids: list[int]

    def to_dict(self) -> dict[str, Any]:
        """The outcome as plain JSON-ready values."""
        return {"token": self.token, "token_id": self.token_id, "logit": self.logit, "log_prob": self.log_prob,
                "generated": self.generated, "generated_ids": list(self.generated_ids)}


@dataclass(frozen=True)
class Comparison:
    """The same prompt before and after steering; ``reference_*`` is the originally predicted token."""

    prompt: str
    edits: list[NeuronEdit]
    reference_token: str
    reference_id: int
    before: Outcome
    after: Outcome

    def to_dict(self) -> dict[str, Any]:
        """The comparison as plain JSON-ready values."""
        return {
            "prompt": self.prompt,
            "neurons": [e.to_dict() for e in self.edits],
            "reference": {"token": self.reference_token, "token_id": self.reference_id},
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
        }


def _outcome(model: nn.Module, tokenizer, ids: torch.Tensor, reference: int | None,
             max_new_tokens: int) -> Outcome:
    """Next-token logits, then a greedy continuation, under whatever steering is active."""
    import warnings

    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].double()
    predicted = int(logits.argmax())
    reference = predicted if reference is None else reference
    log_probs = torch.log_softmax(logits, dim=-1)
    generated: list[int] = []
    if max_new_tokens > 0:
        kwargs: dict[str, Any] = {"do_sample": False, "max_new_tokens": max_new_tokens}
        pad = ModelAdapter.of(model).pad_token_id(tokenizer)
        if pad is not None:
            kwargs["pad_token_id"] = pad
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sampling defaults of the checkpoint's generation config
            generate = getattr(model, "generate")  # nn.Module declares none: a transformers language model's
            output = generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        generated = [int(t) for t in sequences[0, ids.shape[1]:].tolist()]
    return Outcome(tokenizer.decode([predicted]), predicted, float(logits[reference]), float(log_probs[reference]),
                   tokenizer.decode(generated), generated)


def compare(model: nn.Module, tokenizer, prompt: str, steering: Steering, *, max_new_tokens: int = 20) -> Comparison:
    """Run ``prompt`` without and with ``steering``: next token, the original token's logit and log-probability,
    and ``max_new_tokens`` greedy tokens each time."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise SteeringError(f"the number of tokens to generate must be 0 or more, got {max_new_tokens!r}")
    if steering.model is not model:
        raise SteeringError("the steering was made for another model instance")
    adapter = ModelAdapter.of(model)
    adapter.input_embedding()
    if adapter.head != "causal-lm" or not hasattr(model, "generate"):
        raise SteeringError(f"{type(model).__name__} is not a causal language model; steering compares generations")
    prepared = prepare_prompt(tokenizer, prompt, True, add_bos=bos_policy(None, tokenizer, adapter.head))  # as explained
    limit = adapter.max_length(tokenizer)
    if limit is not None and len(prepared) + max_new_tokens > limit:
        raise SteeringError(f"the prompt ({len(prepared)} tokens) and {max_new_tokens} new tokens exceed the "
                            f"model's maximum of {limit} tokens; shorten the prompt or generate fewer tokens")
    ids = torch.tensor([prepared.input_ids], dtype=torch.long, device=adapter.device)
    before = _outcome(model, tokenizer, ids, None, max_new_tokens)
    with steering:
        after = _outcome(model, tokenizer, ids, before.token_id, max_new_tokens)
    return Comparison(prompt, list(steering.edits), before.token, before.token_id, before, after)
