"""Errors and warnings users see: each message says what went wrong and what to do."""

from __future__ import annotations


class ExplainError(ValueError):
    """A request that cannot be explained as asked; the message says what to change."""


class MissingExtraError(ImportError):
    """An optional feature's dependencies are not installed; the message names the extra that brings them."""


class UnruledOperationWarning(UserWarning):
    """A non-linear operation ran without an LRP rule: the relevance may be unfaithful (the ledger's residual
    says by how much). The CLI and callers filter this category by type, never by message text."""
