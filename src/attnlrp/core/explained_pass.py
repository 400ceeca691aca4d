"""One explained pass: the forward/backward protocol every explainer shares (text, batches, generation,
images, latents), so that leaves, seeds, gradients, ledgers and the unruled-operation warning live in one place.

>>> with ExplainedPass(model, "attnlrp") as explained:
...     explained.start(rows=1)
...     leaf, embeds = explained.leaf(embedding(ids))
...     value = model(inputs_embeds=embeds).logits[:, -1, token]
...     result = explained.backward(value, [leaf])
>>> result.relevance[0]   # (rows, tokens), float64
>>> result.ledgers[0]     # the conservation ledger of row 0

The explainers differ only in how they build inputs and read their targets; everything after the model's
output is this module's job.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ExplainError
from .audit import Audit, warn_unruled
from .context import LRPContext
from .ledger import Ledger, LedgerReport
from .methods import Method, MethodSpec, get_method, relevance_per_token


@dataclass(frozen=True)
class BackwardResult:
    """What one backward gives, per leaf: the gradient, the relevance per token (gradient × input summed over
    the features, float64) and what a heatmap shows per token (``Method.token_scores``); one ledger per row."""

    grads: list[torch.Tensor]
    relevance: list[torch.Tensor]  # per leaf: (rows, tokens…), float64
    scores: list[torch.Tensor]  # per leaf: (rows, tokens…), float64
    ledgers: list[LedgerReport]


class ExplainedPass(AbstractContextManager):
    """Grad on, the method's rules on the model; leaves in fp32; one ``backward`` per seed.

    ``context``: a reusable ``LRPContext`` (an explainer's), whose hooks stay parked between passes.
    ``feature_dim`` is the dimension of a leaf that relevance is summed over to give one score per token
    (the embedding, -1) or per pixel (the channels, 1). On exit, non-linear operations that ran without a rule
    are reported once, as an ``UnruledOperationWarning`` (only for methods that use rules).
    """

    def __init__(
        self, model: nn.Module, method: MethodSpec = "attnlrp", *, feature_dim: int = -1, warn: bool = True,
        context: LRPContext | None = None, **rules: Any
    ) -> None:
        # rules: strict=, gamma= (see LRPContext); or a (reusable) context made for this model and method
        if context is not None and (context.model is not model or context.method != get_method(method) or rules):
            raise ValueError("pass either a context made for this model and method or the rules, not both")
        self.context = context if context is not None else LRPContext(model, method, **rules)
        self.feature_dim = feature_dim
        self.warn = warn
        self._grad_mode = torch.enable_grad()

    # ---------------------------------------------------------------------------------------------- state
    @property
    def method(self) -> Method:
        """The method whose rules this pass applies."""
        return self.context.method

    @property
    def audit(self) -> Audit:
        """Which rule covered which operation, and what ran without one."""
        return self.context.audit

    @property
    def ledger(self) -> Ledger:
        """The relevance absorbed on the way back (biases, constants, stabilisers), per site."""
        return self.context.ledger

    @property
    def unhandled(self) -> list[dict]:
        """Non-linear operations on input-dependent tensors that no rule covered (``Audit.unhandled_list``)."""
        return self.audit.unhandled_list()

    @property
    def covered(self) -> list[dict]:
        """What each rule covered, with counts (``Audit.covered_table``)."""
        return self.audit.covered_table()

    # ------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "ExplainedPass":
        self._grad_mode.__enter__()
        try:
            self.context.__enter__()
        except BaseException:
            self._grad_mode.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.context.__exit__(exc_type, exc, tb)
        finally:
            self._grad_mode.__exit__(exc_type, exc, tb)
        if exc_type is None and self.warn and self.method.uses_rules:
            warn_unruled(self.unhandled, stacklevel=3)

    # ---------------------------------------------------------------------------------------------- a pass
    def start(self, rows: int) -> None:
        """Before a forward pass of ``rows`` rows: additive embeddings are kept per row, and the previous
        pass's absorber leaves (not in this graph) are dropped."""
        self.context.batch_size = rows
        self.context.absorber_leaves.clear()

    @staticmethod
    def leaf(inputs: torch.Tensor, copies: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """A leaf that requires grad (fp32 when the model runs in half precision, so relevance is read at full
        precision) and what to feed the model (the leaf cast back to the input's dtype); ``copies`` repeats a
        single row along the batch."""
        dtype = torch.float32 if inputs.dtype in (torch.float16, torch.bfloat16) else inputs.dtype
        leaf = inputs.detach().to(dtype)
        if copies > 1:
            leaf = leaf.expand(copies, *leaf.shape[1:]).clone()
        leaf.requires_grad_(True)
        return leaf, (leaf if inputs.dtype == dtype else leaf.to(inputs.dtype))

    def backward(
        self,
        values: torch.Tensor,
        leaves: Sequence[torch.Tensor],
        *,
        retain: bool = False,
        masks: Sequence[torch.Tensor | None] | None = None,
        what: str = "the target",
    ) -> BackwardResult:
        """Differentiate ``values`` (one explained scalar per row, or a single scalar for row 0) and read the
        leaves: row ``r``'s gradient is seeded by ``values[r]`` only, as long as the rows do not interact.

        ``masks`` (per leaf, ``(rows, tokens)`` booleans) say which tokens are real: padding is left out of the
        ledger's input relevance. ``retain`` keeps the graph for another backward on the same forward.
        """
        values = values.reshape(-1)
        if not torch.isfinite(values.detach()).all():
            raise ExplainError(
                f"the model produced a non-finite value (NaN or inf) for {what}; check the model's weights and "
                "dtype (fp16 overflows easily: try bfloat16 or float32)"
            )
        self.ledger.reset()
        # .backward(), not autograd.grad: reentrant gradient checkpointing supports only the former. The
        # parameters are frozen, so only our own leaves (inputs, additive embeddings) receive .grad
        values.to(torch.float64).sum().backward(retain_graph=retain)
        grads = []
        for leaf in leaves:
            grad = torch.zeros_like(leaf) if leaf.grad is None else leaf.grad
            leaf.grad = None
            if not torch.isfinite(grad).all():
                raise ExplainError("relevance is not finite (NaN/inf in the backward pass); try float32")
            grads.append(grad)
        for absorber in self.context.absorber_leaves:
            absorber.grad = None
        rows = values.shape[0]
        relevance = [relevance_per_token(leaf, grad, self.feature_dim) for leaf, grad in zip(leaves, grads)]
        scores = [
            rel if self.method.token_score == "relevance" else self.method.token_scores(leaf, grad, self.feature_dim)
            for leaf, grad, rel in zip(leaves, grads, relevance)
        ]
        masks = list(masks) if masks is not None else [None] * len(leaves)
        input_relevance = torch.zeros(rows, dtype=torch.float64)
        for rel, mask in zip(relevance, masks):
            kept = rel if mask is None else rel * mask.to(rel.device, torch.float64)
            input_relevance += kept.reshape(kept.shape[0], -1).sum(dim=1).cpu()
        ledgers = [
            self.ledger.row(
                r, input_relevance=float(input_relevance[r]), value=float(values[r].detach().double()), batch_size=rows
            )
            for r in range(rows)
        ]
        return BackwardResult(grads, relevance, scores, ledgers)
