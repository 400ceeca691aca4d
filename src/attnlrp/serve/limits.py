"""What one request may ask of the explorer's server, and the errors that say which limit was hit and how to
raise it.

Every limit has a command-line option of ``attnlrp serve``; its error names it, so a user who needs more knows
what to change instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ExplainError

#: the longest prompt accepted by default, whatever the model's own context
DEFAULT_PROMPT_TOKENS = 2048
DEFAULT_NEW_TOKENS = 128
DEFAULT_BODY_BYTES = 64 * 1024
#: ``/api/explain-image`` takes an image file and ``/api/export`` a whole view, so their bodies may be larger
DEFAULT_UPLOAD_BYTES = 2 * 1024 * 1024
DEFAULT_STEER_NEURONS = 64
DEFAULT_QUEUE = 8


class RequestError(ExplainError):
    """A request the server refuses, with the HTTP status to answer (400 unless said otherwise); the message says
    what to change."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """The bounds of one request. ``prompt_tokens=None`` means the model's context, at most
    :data:`DEFAULT_PROMPT_TOKENS` (:meth:`for_context` resolves it once the model is known)."""

    prompt_tokens: int | None = None
    new_tokens: int = DEFAULT_NEW_TOKENS
    body_bytes: int = DEFAULT_BODY_BYTES
    upload_bytes: int = DEFAULT_UPLOAD_BYTES
    steer_neurons: int = DEFAULT_STEER_NEURONS
    queue: int = DEFAULT_QUEUE

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "new_tokens", "body_bytes", "upload_bytes", "steer_neurons", "queue"):
            value = getattr(self, name)
            if value is None and name == "prompt_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ExplainError(f"the limit {name} must be a positive integer, got {value!r}")

    def for_context(self, context: int | None) -> "Limits":
        """These limits with ``prompt_tokens`` resolved: the given one, else the model's ``context`` (its maximum
        length, ``None`` when unknown), at most :data:`DEFAULT_PROMPT_TOKENS`."""
        if self.prompt_tokens is not None:
            return self
        default = DEFAULT_PROMPT_TOKENS if context is None else min(context, DEFAULT_PROMPT_TOKENS)
        return Limits(default, self.new_tokens, self.body_bytes, self.upload_bytes, self.steer_neurons, self.queue)

    def to_dict(self) -> dict[str, int | None]:
        """What ``/api/info`` shows the page."""
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "body_bytes": self.body_bytes,
                "upload_bytes": self.upload_bytes, "steer_neurons": self.steer_neurons, "queue": self.queue}

    # ------------------------------------------------------------------------------------------ checks
    def check_prompt(self, tokens: int) -> None:
        """A prompt of ``tokens`` tokens (BOS included) is at most ``prompt_tokens`` long."""
        if self.prompt_tokens is not None and tokens > self.prompt_tokens:
            raise RequestError(f"the prompt is {tokens} tokens long; this server takes at most {self.prompt_tokens} "
                               "(shorten it, or start attnlrp serve with --max-prompt-tokens N)")

    def check_new_tokens(self, count: int) -> None:
        """A generation of ``count`` tokens asks for at most ``new_tokens``."""
        if count > self.new_tokens:
            raise RequestError(f"max_new_tokens is {count}; this server generates at most {self.new_tokens} "
                               "(ask for fewer, or start attnlrp serve with --max-new-tokens N)")

    def check_steer_neurons(self, count: int) -> None:
        """A steering request changes at most ``steer_neurons`` neurons."""
        if count > self.steer_neurons:
            raise RequestError(f"the request changes {count} neurons; this server changes at most "
                               f"{self.steer_neurons} per request (name fewer, or start attnlrp serve with "
                               "--max-steer-neurons N)")


def _kib(size: int) -> str:
    return f"{size // (1024 * 1024)} MiB" if size % (1024 * 1024) == 0 else f"{size / 1024:g} KiB"


def body_too_large(size: int | None, limit: int, *, image: bool = False) -> RequestError:
    """413 for a body over ``limit`` bytes (``size`` when it is known from Content-Length)."""
    got = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    what = "an image" if image else "a request body"
    return RequestError(f"{what} of {got} is over this server's limit of {limit} bytes ({_kib(limit)}); send less",
                        status=413)
