"""Errors users see: each message says what went wrong and what to do."""


class ExplainError(ValueError):
    """A request that cannot be explained as asked; the message says what to change."""
