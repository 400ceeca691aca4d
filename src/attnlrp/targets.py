"""What is explained: one small class per kind of target, behind one interface.

A target reads one scalar per row from the model's output and describes it (``explanation.Target``). The
explainers never branch on the kind: ``target_for`` turns the user's ``target=`` / ``contrast=`` /
``position=`` into a target object once, and the explained pass differentiates whatever it returns. A new kind
of target is a new class with a ``read`` method (pass an instance as ``target=``), not an edit of an if-ladder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Union, runtime_checkable

import torch

from .errors import ExplainError
from .explanation import Target
from .models.adapter import ModelAdapter
from .tokens import TokenizedPrompt


@dataclass(frozen=True)
class Reading:
    """What a target may use to read its value: the model's output, the row, its tokens, the model's adapter
    and the tokenizer."""

    output: Any
    row: int
    rows: int
    prompt: TokenizedPrompt | None  # None for inputs that are not text (images)
    adapter: ModelAdapter
    tokenizer: Any
    #: the positions whose logits the model computed (``logits_to_keep``), in the order of the logits' second
    #: dimension; None: every position's
    kept_positions: tuple[int, ...] | None = None

    def logits_at(self, position: int) -> torch.Tensor:
        """This row's logits at ``position`` (a position of the prompt, whichever positions were computed)."""
        if self.kept_positions is None:
            return self.logits[self.row, position]
        return self.logits[self.row, self.kept_positions.index(position)]

    @property
    def logits(self) -> torch.Tensor:
        """The output's ``logits`` (an error that says how to get a head when the model has none)."""
        logits = getattr(self.output, "logits", None)
        if logits is None:
            raise ExplainError(
                f"{type(self.adapter.model).__name__} has no output head (no logits) to explain; load the model "
                "with a head (…ForCausalLM, …ForMaskedLM, …ForSequenceClassification) or pass a target function"
            )
        return logits

    @property
    def text(self) -> TokenizedPrompt:
        """The prompt's tokens, for targets that read token positions (an image has none)."""
        if self.prompt is None:
            raise ExplainError("this target reads a token position, and the input is not text")
        return self.prompt


@runtime_checkable
class TargetKind(Protocol):
    """Reads the explained scalar of one row (a 0-d tensor in the graph) and says what it is."""

    def read(self, reading: Reading) -> tuple[torch.Tensor, Target]:
        """The explained value of ``reading.row`` (a 0-d tensor in the graph) and what it is."""
        ...


@dataclass(frozen=True)
class CustomTarget:
    """A function of the model's output that returns one value per row (e.g. a probe, a loss, a sum)."""

    function: Callable[[Any], torch.Tensor]

    def read(self, reading: Reading) -> tuple[torch.Tensor, Target]:
        """The function's value for ``reading.row`` (it returns one value per row)."""
        value = self.function(reading.output)
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.shape[0] != reading.rows:
            raise ExplainError("a target function must return a 1-D tensor with one value per prompt")
        return value[reading.row], Target(kind="custom", position=None)


@dataclass(frozen=True)
class ClassTarget:
    """A classifier's class logit: the predicted class, a label, or an index."""

    label: int | str | None = None

    def read(self, reading: Reading) -> tuple[torch.Tensor, Target]:
        """The logit of the chosen class (the predicted one by default)."""
        logits = reading.logits[reading.row]
        index, label = reading.adapter.class_index(self.label, logits)
        return logits[index], Target(kind="class", position=None, token_id=index, label=label)


@dataclass(frozen=True)
class TokenTarget:
    """A token's logit at a position (default: the predicted token), optionally minus a contrast token's."""

    token: int | str | None = None
    position: int | None = None
    contrast: int | str | None = None

    kind = "token"

    def default_position(self, reading: Reading) -> int:
        """The position explained when none is given (a plain ``TokenTarget`` needs one)."""
        raise ExplainError("give the position of the explained token (position=)")

    def resolved_position(self, reading: Reading) -> int:
        """The explained position, checked and counted from the start (needs only the prompt, not the output)."""
        prompt = reading.text
        position = self.position if self.position is not None else self.default_position(reading)
        if not -len(prompt) <= position < len(prompt):
            raise ExplainError(f"position {position} is outside the prompt of {len(prompt)} tokens")
        return position % len(prompt)

    def read(self, reading: Reading) -> tuple[torch.Tensor, Target]:
        """The token's logit at the position (minus the contrast token's, if any)."""
        kind = self.kind if self.token is None else "token"
        position = self.resolved_position(reading)
        logits = reading.logits_at(position)
        tokenizer = reading.tokenizer
        token_id = int(logits.argmax()) if self.token is None else reading.adapter.token_id(tokenizer, self.token)
        value = logits[token_id]
        contrast_id = contrast_token = None
        if self.contrast is not None:
            contrast_id = reading.adapter.token_id(tokenizer, self.contrast, "contrast")
            if contrast_id == token_id:
                raise ExplainError("target and contrast are the same token; the difference would be 0")
            value = value - logits[contrast_id]
            contrast_token = tokenizer.decode([contrast_id])
        return value, Target(
            kind=kind, position=position, token_id=token_id, token=tokenizer.decode([token_id]),
            contrast_id=contrast_id, contrast_token=contrast_token,
        )


@dataclass(frozen=True)
class NextToken(TokenTarget):
    """A language model's next token after the prompt (after the decoder prefix, for encoder-decoders)."""

    kind = "next-token"

    def default_position(self, reading: Reading) -> int:
        """The last position of the prompt."""
        return len(reading.text) - 1


@dataclass(frozen=True)
class MaskedToken(TokenTarget):
    """A masked language model's prediction at the prompt's first mask token."""

    kind = "masked-token"

    def default_position(self, reading: Reading) -> int:
        """The prompt's first mask token."""
        mask_id = reading.tokenizer.mask_token_id
        hits = [i for i, t in enumerate(reading.text.input_ids) if t == mask_id]
        if not hits:
            raise ExplainError("no mask token in the prompt: add one or pass position=")
        return hits[0]


TargetSpec = Union[None, int, str, Callable[[Any], torch.Tensor], TargetKind]
"""What ``target=`` accepts: ``None`` (the prediction), a token id or string, a function of the model's output
(one value per row), or a :class:`TargetKind` such as :class:`NextToken`."""

_TOKEN_TARGETS: dict[str, type[TokenTarget]] = {"masked-lm": MaskedToken}


def target_for(head: str, spec: TargetSpec, contrast: int | str | None = None, position: int | None = None) -> TargetKind:
    """The target object for a model head and what the user asked for (``target=``, ``contrast=``, ``position=``)."""
    if isinstance(spec, TargetKind) and not isinstance(spec, (str, int)):
        if contrast is not None or position is not None:
            raise ExplainError("contrast= and position= go into the target object itself, not beside it")
        return spec
    if callable(spec):
        return CustomTarget(spec)
    if head == "seq-cls":
        if contrast is not None or position is not None:
            raise ExplainError("a sequence-classification head takes only a class as target")
        return ClassTarget(spec)
    return _TOKEN_TARGETS.get(head, NextToken)(spec, position, contrast)
