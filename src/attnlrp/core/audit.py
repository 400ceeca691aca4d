"""What the rules saw during explained forward passes: which rule covered which operation, and every
non-linear operation on an input-dependent tensor that ran without a rule."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field

from ..errors import UnruledOperationWarning


@dataclass(frozen=True)
class UnhandledOp:
    """A non-linear operation on an input-dependent tensor that no rule covered."""

    op: str
    module: str  # dotted path of the innermost module that ran it ("" for the model itself)
    module_type: str

    def __str__(self) -> str:
        where = f"{self.module} ({self.module_type})" if self.module else self.module_type
        return f"{self.op} in {where}"


@dataclass
class Audit:
    """What the rules saw during explained forward passes."""

    covered: Counter = field(default_factory=Counter)  # (rule, operation) -> count
    unhandled: Counter = field(default_factory=Counter)  # UnhandledOp -> count

    def clear(self) -> None:
        """Forget what was seen (a reused rule context starts each use afresh)."""
        self.covered.clear()
        self.unhandled.clear()

    def cover(self, rule: str, op: str) -> None:
        """Count one operation that ``rule`` covered."""
        self.covered[(rule, op)] += 1

    def flag(self, op: UnhandledOp) -> None:
        """Count one non-linear operation that ran without a rule."""
        self.unhandled[op] += 1

    def covered_table(self) -> list[dict]:
        """The covered operations as rows ``{rule, operation, count}``, sorted."""
        return [{"rule": r, "operation": o, "count": n} for (r, o), n in sorted(self.covered.items())]

    def unhandled_list(self) -> list[dict]:
        """The unruled operations as rows ``{operation, module, module_type, count}``, sorted."""
        return [
            {"operation": u.op, "module": u.module, "module_type": u.module_type, "count": n}
            for u, n in sorted(self.unhandled.items(), key=lambda kv: str(kv[0]))
        ]


class UnhandledOperationError(RuntimeError):
    """Raised in strict mode when a non-linear operation ran without a rule."""


def warn_unruled(unhandled: list[dict], *, stacklevel: int = 2) -> None:
    """The one warning about operations without a rule (category ``UnruledOperationWarning``)."""
    if not unhandled:
        return
    listing = "; ".join(f"{u['operation']} in {u['module'] or u['module_type']} ({u['count']}×)" for u in unhandled[:8])
    more = f" and {len(unhandled) - 8} more" if len(unhandled) > 8 else ""
    warnings.warn(
        f"non-linear operations ran without an LRP rule, relevance may be unfaithful: {listing}{more}. "
        "The ledger's residual quantifies it; pass strict=True to make this an error.",
        UnruledOperationWarning,
        stacklevel=stacklevel + 1,
    )
