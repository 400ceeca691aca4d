"""The relevance ledger of an explained pass: input relevance + relevance absorbed on the way = explained value.

Every rule that does not pass all relevance on (a softmax, an attention's mask, a bias, a constant addend, the
γ-rule's stabiliser) reports what it kept to a ``Ledger``, per batch row and kind of site. A ledger that does
not balance means some non-linear operation ran without a rule: that is how an architecture proves it is
covered (``attnlrp audit``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class SharedAbsorptionError(ValueError):
    """Relevance was absorbed by a tensor shared by all rows of a batch (T5's relative position bias), so
    per-row ledgers need one pass per row."""


class Ledger:
    """Accumulates the relevance absorbed at each kind of site during backward passes.

    Rules report one amount per leading row of the tensor they saw. That leading dimension is the batch, or
    batch × tokens for layers that flatten them (MoE routers), always batch-major, so ``row`` folds it back to
    the batch. Tensors shared by the whole batch (no batch dimension) report to ``shared``.
    """

    def __init__(self) -> None:
        # amounts stay on the device they were computed on, in float64: reading them is one transfer after the
        # backward pass (``totals``), not a host synchronisation per tap
        self.by_site: dict[str, torch.Tensor] = {}
        self.shared: dict[str, torch.Tensor] = {}

    def absorb(self, site: str, amount: torch.Tensor) -> None:
        """Add ``amount`` (one value per leading row of the tensor a rule saw) to what ``site`` absorbed."""
        amount = amount.detach()
        if amount.device.type == "mps":  # no float64 there
            amount = amount.cpu()
        amount = amount.to(torch.float64).reshape(-1)
        previous = self.by_site.get(site)
        if previous is not None and (previous.shape != amount.shape or previous.device != amount.device):
            # the same kind of site seen with another leading size (e.g. batch and batch × tokens), or on
            # another device (a model split over GPUs): keep both
            site = f"{site}#{amount.numel()}@{amount.device}"
            previous = self.by_site.get(site)
        self.by_site[site] = amount if previous is None else previous + amount

    def absorb_shared(self, site: str, amount: torch.Tensor) -> None:
        """Add ``amount``, absorbed by a tensor shared by all rows of the batch, to ``site`` (summed: it has no
        rows)."""
        total = amount.detach().to(torch.float64).sum().cpu()
        self.shared[site] = total if site not in self.shared else self.shared[site] + total

    @property
    def running(self) -> float:
        """Everything absorbed since the last reset, all rows together. Read during a backward pass, the
        difference of two readings is what was absorbed in between (``localise`` reads it per block); each
        reading synchronises with the device, so only diagnostics read it."""
        return float(sum(float(t.sum()) for t in self.by_site.values()) + sum(float(t) for t in self.shared.values()))

    def reset(self) -> None:
        """Forget everything absorbed so far (before the next backward pass)."""
        self.by_site.clear()
        self.shared.clear()

    def totals(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Absorbed relevance per site and batch row, shape ``(batch_size,)`` each."""
        folded: dict[str, torch.Tensor] = {}
        for key, amount in self.by_site.items():
            site, amount = key.split("#")[0], amount.cpu()
            if amount.numel() % batch_size:
                raise ValueError(
                    f"relevance absorbed at '{site}' has {amount.numel()} rows, not a multiple of the batch "
                    f"size {batch_size}; explain these prompts one at a time"
                )
            rows = amount.reshape(batch_size, -1).sum(dim=1)
            folded[site] = folded[site] + rows if site in folded else rows
        for site, shared in self.shared.items():
            total = float(shared)
            if batch_size != 1 and total != 0.0:
                raise SharedAbsorptionError(
                    f"relevance absorbed at '{site}' is shared by all prompts of the batch and cannot be split "
                    "per prompt; explain these prompts one at a time"
                )
            value = torch.tensor([total], dtype=torch.float64)
            folded[site] = folded[site] + value if site in folded else value
        return folded

    def row(self, index: int, *, input_relevance: float, value: float, batch_size: int = 1) -> "LedgerReport":
        """The ledger of batch row ``index``: the input relevance and value given, and what each site absorbed in
        that row."""
        sites = {site: float(rows[index]) for site, rows in self.totals(batch_size).items()}
        return LedgerReport(input=input_relevance, absorbed=sum(sites.values()), value=value, by_site=sites)


class SharedSink:
    """Adapter: a rule's per-row report of a tensor without batch dimension goes to ``Ledger.shared``."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def absorb(self, site: str, amount: torch.Tensor) -> None:
        self.ledger.absorb_shared(site, amount)


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
        """The report as plain JSON-ready values (``residual`` included)."""
        return {
            "input": self.input,
            "absorbed": self.absorbed,
            "value": self.value,
            "residual": self.residual,
            "by_site": dict(self.by_site),
        }
