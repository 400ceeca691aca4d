"""Bookkeeping of an explained pass: which rule covered which operation, what ran without a rule, and the
relevance ledger (input relevance + absorbed = explained value).

A ledger that does not balance means some non-linear operation ran without a rule (DESIGN.md §1): that is how
an architecture proves it is covered.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch


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

    def cover(self, rule: str, op: str) -> None:
        self.covered[(rule, op)] += 1

    def flag(self, op: UnhandledOp) -> None:
        self.unhandled[op] += 1

    def covered_table(self) -> list[dict]:
        return [{"rule": r, "operation": o, "count": n} for (r, o), n in sorted(self.covered.items())]

    def unhandled_list(self) -> list[dict]:
        return [
            {"operation": u.op, "module": u.module, "module_type": u.module_type, "count": n}
            for u, n in sorted(self.unhandled.items(), key=lambda kv: str(kv[0]))
        ]


class UnhandledOperationError(RuntimeError):
    """Raised in strict mode when a non-linear operation ran without a rule."""


class Ledger:
    """Accumulates, per batch row, the relevance absorbed at each kind of site during one backward pass."""

    def __init__(self) -> None:
        self.by_site: dict[str, torch.Tensor] = {}

    def absorb(self, site: str, amount: torch.Tensor) -> None:
        amount = amount.detach().to("cpu", torch.float64).reshape(-1)
        previous = self.by_site.get(site)
        if previous is None:
            self.by_site[site] = amount
        elif previous.shape == amount.shape:
            self.by_site[site] = previous + amount
        elif amount.numel() == 1 or previous.numel() == 1:
            # a tensor without a batch dimension (shared by all rows) cannot be split per row
            raise ValueError(
                f"relevance absorbed at '{site}' has no batch dimension; explain these prompts one at a time"
            )
        else:
            raise ValueError(f"ledger rows disagree at '{site}': {tuple(previous.shape)} vs {tuple(amount.shape)}")

    def reset(self) -> None:
        self.by_site.clear()

    def row(self, index: int, *, input_relevance: float, value: float) -> "LedgerReport":
        sites = {site: float(t[index] if t.numel() > 1 else t[0]) for site, t in self.by_site.items()}
        return LedgerReport(input=input_relevance, absorbed=sum(sites.values()), value=value, by_site=sites)


@dataclass(frozen=True)
class LedgerReport:
    """Input relevance, relevance absorbed on the way (total and per kind of site), and the explained value."""

    input: float
    absorbed: float
    value: float
    by_site: dict[str, float] = field(default_factory=dict)

    @property
    def residual(self) -> float:
        """``input + absorbed − value``: zero up to rounding when every non-linear operation had a rule."""
        return self.input + self.absorbed - self.value

    @property
    def scale(self) -> float:
        """The largest term of the balance: rounding errors grow with it, even when the value is near 0."""
        return max([abs(self.value), abs(self.input), sum(abs(v) for v in self.by_site.values())])

    def balanced(self, rtol: float = 1e-4, atol: float = 1e-9) -> bool:
        """``|input + absorbed − value| ≤ rtol · scale + atol``."""
        return abs(self.residual) <= rtol * self.scale + atol

    def to_dict(self) -> dict:
        return {
            "input": self.input,
            "absorbed": self.absorbed,
            "value": self.value,
            "residual": self.residual,
            "by_site": dict(self.by_site),
        }
