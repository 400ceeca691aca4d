"""Errors of the concept atlas; subclasses of :class:`ExplainError`, so the CLI reports them in one line."""

from __future__ import annotations

from ..errors import ExplainError


class AtlasError(ExplainError):
    """A concept atlas cannot be built, resumed or read as asked; the message says what to change."""


class AtlasMismatchError(AtlasError):
    """An existing atlas was built with other settings: resuming would mix two atlases."""
