"""Reading a JSON request: every field typed and checked once, unknown fields refused, and a message that says
what the field should have been. Nothing here touches the model."""

from __future__ import annotations

import json
import math
from typing import Any, Iterable

from .limits import RequestError

_TYPE_NAMES = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
               dict: "an object", type(None): "null"}


def json_body(raw: bytes) -> Any:
    """The parsed body; 400 when it is not JSON."""
    if not raw.strip():
        raise RequestError('the request body is empty: send a JSON object, e.g. {"prompt": "…"}')
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(f"the request body is not valid JSON ({error}); send a JSON object") from None


def _kind(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class Fields:
    """The fields of one request object; ``allowed`` are the names this call takes."""

    def __init__(self, data: Any, allowed: Iterable[str], call: str) -> None:
        allowed = tuple(allowed)
        if not isinstance(data, dict):
            raise RequestError(f"{call} takes a JSON object with the fields {', '.join(allowed)}; got {_kind(data)}")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise RequestError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                               f"{call} takes {', '.join(allowed)}")
        self.data = data

    def has(self, name: str) -> bool:
        return self.data.get(name) is not None

    def text(self, name: str, *, required: bool = False, what: str = "") -> str | None:
        value = self.data.get(name)
        if value is None:
            if required:
                raise RequestError(f"{name} is missing: give {what or 'a string'}")
            return None
        if not isinstance(value, str):
            raise RequestError(f"{name} must be a string{f' ({what})' if what else ''}, not {_kind(value)}")
        return value

    def integer(self, name: str, default: int | None = None, *, minimum: int | None = None) -> int | None:
        value = self.data.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise RequestError(f"{name} must be an integer, not {_kind(value)}")
        if minimum is not None and value < minimum:
            raise RequestError(f"{name} must be at least {minimum}, got {value}")
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.data.get(name)
        if value is not None and not isinstance(value, bool):
            raise RequestError(f"{name} must be true, false or null, not {_kind(value)}")
        return value

    def token(self, name: str) -> int | str | None:
        """A token given as its string (one token of the vocabulary) or its id."""
        value = self.data.get(name)
        if value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise RequestError(f"{name} must be a token string or a token id (integer), not {_kind(value)}")

    def int_list(self, name: str) -> list[int] | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise RequestError(f"{name} must be a list of integers")
        return value

    def string_list(self, name: str) -> list[str]:
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
            raise RequestError(f'{name} must be a list of "LAYER:NEURON" strings, e.g. ["3:17"]')
        return value

    def number_map(self, name: str) -> dict[str, float]:
        value = self.data.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                              or not math.isfinite(v) for v in value.values()):
            raise RequestError(f'{name} must be an object {{"LAYER:NEURON": number}}, e.g. {{"3:17": 0.5}}')
        return value

    def prompt(self) -> str | list[int]:
        """``prompt`` (text) or ``token_ids`` (used as given): exactly one of them."""
        text, ids = self.text("prompt", what="the text"), self.int_list("token_ids")
        if (text is None) == (ids is None):
            raise RequestError("give the prompt: either prompt (the text) or token_ids (a list of token ids), "
                               "not both" if text is not None else "prompt is missing: give the text as "
                               '{"prompt": "…"} (or token ids as {"token_ids": [...]})')
        return text if text is not None else list(ids or [])
