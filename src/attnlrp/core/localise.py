"""Where relevance leaks: conservation block by block.

The ledger says *whether* input relevance + absorbed relevance adds up to the explained value. When it does not,
``BlockBalances`` says *where*: for every watched block (each transformer layer, and each of its direct
children) it reads the relevance at the block's output, at its input, and what the ledger absorbed while the
backward pass was inside the block. A block that conserves satisfies ``output = input + absorbed`` up to
rounding; the first block on the relevance's way back (from the output towards the input) that does not is
where a rule is missing or wrong.

>>> with BlockBalances(model) as balances:
...     explanation = explainer(prompt)
>>> balances.first_leak()   # BlockBalance(name='model.layers.1.mlp', output=…, input=…, absorbed=…) or None
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .context import open_context


@dataclass
class BlockBalance:
    """Relevance at a block's output and input, and what was absorbed in between (row 0 of the batch)."""

    name: str
    order: int  # the block's place in the forward pass
    output: float | None = None
    input: float | None = None
    absorbed_before: float | None = None  # the ledger's running total when backward entered the block
    absorbed_after: float | None = None  # … and when it left it

    @property
    def complete(self) -> bool:
        return None not in (self.output, self.input, self.absorbed_before, self.absorbed_after)

    def _read(self, what: str) -> float:
        value = getattr(self, what)
        if value is None:
            raise ValueError(f"block {self.name}: its {what} was not read (the block is not complete)")
        return float(value)

    @property
    def absorbed(self) -> float:
        return self._read("absorbed_after") - self._read("absorbed_before")

    @property
    def leak(self) -> float:
        """``output − input − absorbed``: relevance the block lost (> 0) or created (< 0)."""
        return self._read("output") - self._read("input") - self.absorbed

    def conserves(self, rtol: float = 1e-4, atol: float = 1e-9) -> bool:
        scale = max(abs(self._read("output")), abs(self._read("input")), abs(self.absorbed))
        return abs(self.leak) <= rtol * scale + atol

    def to_dict(self) -> dict[str, Any]:
        return {"block": self.name, "output": self.output, "input": self.input, "absorbed": self.absorbed,
                "leak": self.leak, "conserves": self.conserves()}


def _relevance(tensor: torch.Tensor, grad: torch.Tensor) -> float:
    return float((tensor.detach()[:1].double() * grad[:1].double()).sum())


def default_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Each transformer layer and each of its direct children (attention, MLP, norms); [] when the model has no
    recognisable stack of layers."""
    from ..latent.relevance import transformer_layers

    try:
        layers = transformer_layers(model)
    except ValueError:
        return []
    names = {id(m): n for n, m in model.named_modules()}
    blocks: list[tuple[str, nn.Module]] = []
    for layer in layers:
        blocks.append((names[id(layer)], layer))
        blocks.extend((f"{names[id(layer)]}.{child_name}", child) for child_name, child in layer.named_children())
    return blocks


class BlockBalances(AbstractContextManager):
    """Watches ``blocks`` (default: ``default_blocks(model)``) during the explained passes run inside; only
    blocks with one tensor in and one tensor out (the hidden states) can be balanced, others are skipped."""

    def __init__(self, model: nn.Module, blocks: list[tuple[str, nn.Module]] | None = None) -> None:
        self.model = model
        self.blocks = default_blocks(model) if blocks is None else blocks
        self.balances: list[BlockBalance] = []
        self._handles: list[Any] = []

    def __enter__(self) -> "BlockBalances":
        for order, (name, module) in enumerate(self.blocks):
            inputs: list[torch.Tensor | None] = []  # per call of this block: its own alias of the input
            self._handles.append(module.register_forward_pre_hook(self._alias(inputs), with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._watch(name, order, inputs), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _alias(self, inputs: list) -> Callable:
        """Feed the block an alias of its input that nothing else uses: the gradient reaching the alias is what
        the block alone sends back (the residual stream's own gradient also holds the skip connection's)."""

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if open_context(self.model) is None:
                inputs.append(None)
                return None
            if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
                alias = args[0].view_as(args[0])
                inputs.append(alias)
                return (alias, *args[1:]), kwargs
            hidden = kwargs.get("hidden_states")
            if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
                alias = hidden.view_as(hidden)
                inputs.append(alias)
                return args, {**kwargs, "hidden_states": alias}
            inputs.append(None)
            return None

        return pre_hook

    def _watch(self, name: str, order: int, inputs: list) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = inputs.pop() if inputs else None
            y = output[0] if isinstance(output, (tuple, list)) and output else output
            context = open_context(self.model)
            if context is None or x is None or not isinstance(y, torch.Tensor) or not y.requires_grad:
                return
            if x.shape != y.shape:
                return  # not a block of the residual stream
            balance = BlockBalance(name, order)
            self.balances.append(balance)
            ledger = context.ledger

            def at_output(grad: torch.Tensor) -> None:
                balance.output, balance.absorbed_before = _relevance(y, grad), ledger.running

            def at_input(grad: torch.Tensor) -> None:
                balance.input, balance.absorbed_after = _relevance(x, grad), ledger.running

            y.register_hook(at_output)
            x.register_hook(at_input)

        return hook

    def leaks(self, rtol: float = 1e-4, atol: float = 1e-9) -> list[BlockBalance]:
        """The blocks that lose or create relevance, in the order the relevance meets them (output first)."""
        complete = [b for b in self.balances if b.complete]
        return sorted((b for b in complete if not b.conserves(rtol, atol)), key=lambda b: -b.order)

    def first_leak(self, rtol: float = 1e-4, atol: float = 1e-9) -> BlockBalance | None:
        """Where the relevance, flowing back from the output, first stops adding up. A layer's children come
        after it in the forward pass, so they come before it here: a leaking child names the leak more
        precisely than its layer."""
        leaks = self.leaks(rtol, atol)
        return leaks[0] if leaks else None
