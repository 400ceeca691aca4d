"""Whose failure is it? When a command's explained (ruled) pass fails with an exception that is not a user error,
the model's own forward runs once more on the same input, without any rule and without gradients: if it fails
too, the model itself (its checkpoint, config or code) is broken, which the user is told in one line (exit status
1); if it works, the failure is attnlrp's, and its traceback is what a bug report needs, so it propagates as is.

Every command that runs a model wraps that run in :func:`model_must_run`; :func:`attnlrp.cli.main` prints
:class:`ModelForwardError`. The plain forward is only ever run after a failure, so a working run costs nothing.

The exit status follows whose mistake it is, and when it is found: :func:`usage_errors` (the request is wrong,
found before any work) give 2, like argparse's own; :func:`runtime_errors` (the work failed) give 1.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

#: Builds the keyword arguments of one plain forward (called only after a failure, so it may do real work).
Inputs = Callable[[], Mapping[str, Any]]


class ModelForwardError(Exception):
    """The model's own forward fails without any LRP rule: the model is broken, not the explanation."""

    def __init__(self, failure: BaseException) -> None:
        from ..render.escape import terminal_text

        lines = str(failure).strip().splitlines()
        detail = f"{type(failure).__name__}: {lines[0].strip()}" if lines else type(failure).__name__
        super().__init__(f"the model's own forward fails (without any LRP rule): {terminal_text(detail)}")
        self.failure = failure


def usage_errors() -> tuple[type[BaseException], ...]:
    """What :func:`attnlrp.cli.main` reports as one ``error: …`` line with exit status 2, as argparse does a bad
    option: the request cannot be done as asked, which the library finds before any work: an input it refuses
    (an empty prompt, a target not in the vocabulary, an option that does not fit: ``ExplainError`` and its kinds,
    as ``AtlasError``), or a model or device that cannot be loaded from what was named (``ModelLoadError``)."""
    from ..errors import ExplainError
    from ..models import ModelLoadError

    return (ExplainError, ModelLoadError)


def runtime_errors() -> tuple[type[BaseException], ...]:
    """What :func:`attnlrp.cli.main` reports as one ``error: …`` line with exit status 1: the work failed: the
    model's own forward (:class:`ModelForwardError`), an operation without a rule under ``--strict``
    (``UnhandledOperationError``), a file that cannot be read or written (``OSError``). Any other exception is a
    bug, and keeps its traceback (exit status 1 too)."""
    from ..core import UnhandledOperationError

    return (ModelForwardError, UnhandledOperationError, OSError)


def _not_the_models() -> tuple[type[BaseException], ...]:
    """Failures that say nothing about the model: :func:`model_must_run` lets them pass as they are."""
    from ..core import UnhandledOperationError

    return (*usage_errors(), UnhandledOperationError, OSError)


@contextlib.contextmanager
def model_must_run(model: Callable[[], Any], inputs: Inputs | Iterable[Inputs]) -> Iterator[None]:
    """Run the block; when it fails with anything but a usage error, an operation without a rule under
    ``--strict`` or an ``OSError`` (or ``KeyboardInterrupt``), run ``model()``'s plain forward on ``inputs`` (one
    builder, or several tried in order until one fails): a failure there is raised as :class:`ModelForwardError`
    (the block's exception is its cause); otherwise the block's exception propagates unchanged. ``model`` is a
    callable so that a model loaded inside the block can be checked; it may return ``None`` (nothing was loaded:
    nothing to blame)."""
    try:
        yield
    except _not_the_models():
        raise
    except Exception as error:
        try:
            candidate = model()
        except Exception:  # e.g. the model did not load: the block's own error says more
            candidate = None
        failure = None if candidate is None else plain_forward_failure(
            candidate, [inputs] if callable(inputs) else inputs)
        if failure is None:
            raise
        raise ModelForwardError(failure) from error


def plain_forward_failure(model: Any, inputs: Iterable[Inputs]) -> Exception | None:
    """The exception of ``model``'s plain forward (no rule, ``torch.no_grad``) on the first input where it fails,
    else ``None``. An input that cannot be built gives no verdict (it says nothing about the model)."""
    import torch

    for build in inputs:
        try:
            kwargs = dict(build())
        except Exception:
            continue
        try:
            with torch.no_grad():
                model(**kwargs)
        except Exception as failure:
            return failure
    return None


def text_inputs(model: Any, tokenizer: Any, prompt: str | Sequence[int]) -> Inputs:
    """The plain forward's arguments for a text prompt (or token ids), tokenized as the explainers do: ids,
    attention mask, no cache, and for an encoder-decoder the decoder's start token."""

    def build() -> Mapping[str, Any]:
        import torch

        from ..models.adapter import ModelAdapter, prepare_prompt

        adapter = ModelAdapter.of(model)
        ids = torch.tensor([prepare_prompt(tokenizer, prompt, True).input_ids], dtype=torch.long,
                           device=adapter.device)
        kwargs: dict[str, Any] = {"input_ids": ids, **adapter.no_cache()}
        if adapter.accepts("attention_mask"):
            kwargs["attention_mask"] = torch.ones_like(ids)
        if adapter.head == "seq2seq":
            start = model.config.decoder_start_token_id
            kwargs["decoder_input_ids"] = torch.tensor([[start]], dtype=torch.long, device=adapter.device)
        return kwargs

    return build


def image_inputs(model: Any, pixels: Any) -> Inputs:
    """The plain forward's arguments for one preprocessed image ``(channels, height, width)``."""

    def build() -> Mapping[str, Any]:
        parameter = next(model.parameters())
        return {"pixel_values": pixels.unsqueeze(0).to(parameter.device, parameter.dtype)}

    return build
