"""The rule table: which torch operation is handled by which rule, in one place.

While an ``LRPContext`` is open and one of its model's modules runs, a ``TorchFunctionMode`` sees every torch
call. It looks the call's name up in ``OPERATION_RULES`` and hands it to the registered handler; an operation
that is not in the table runs unchanged, and is flagged if it is non-linear in an input-dependent tensor.

A handler is registered with ``@handles("name", ...)`` and has the signature
``handler(state, call) -> result``; it may return ``NOT_APPLICABLE`` to fall back to the unruled path (e.g. a
softmax over constants). Handlers live in ``attnlrp.core.handlers``; the autograd functions they use live in
``attnlrp.core.rules``, each beside its closed-form oracle test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch
from torch.overrides import TorchFunctionMode

from .audit import Audit
from .rules import RuleFunction
from .ledger import Ledger
from .methods import Method

ROLE = "_attnlrp_role"
"""Tensor attribute that marks attention probabilities (``"softmax"``) and gate activations (``"activation"``)."""


class RuleState(Protocol):
    """What a handler may read and report to: the open context (``LRPContext`` implements it)."""

    method: Method
    audit: Audit
    ledger: Ledger
    norm_depth: int
    hooked_biases: set[int]

    def flag(self, op: str) -> None:
        """Report a non-linear operation that ran without a rule (raises in strict mode)."""
        ...

    def report_function(self, tensor: torch.Tensor) -> None:
        """Report the output of a custom autograd Function that no rule covers (once per Function)."""
        ...

    def current_module_type(self) -> str:
        """The class name of the innermost module running now."""
        ...


@dataclass(frozen=True)
class Call:
    """One intercepted torch call."""

    func: Callable[..., Any]
    name: str
    args: tuple
    kwargs: dict

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The original operation, on the given (or the original) arguments."""
        if not args and not kwargs:
            return self.func(*self.args, **self.kwargs)
        return self.func(*args, **kwargs)


Handler = Callable[[RuleState, Call], Any]
"""An operation rule: ``handler(state, call)`` runs the intercepted call under its rule and returns the result
(or ``NOT_APPLICABLE``)."""
NOT_APPLICABLE = object()
"""What a handler returns when its rule does not apply to this call: the call is then treated as one without a
rule (it runs as it is, and is reported when it mixes input-dependent tensors into its output)."""

OPERATION_RULES: dict[str, Handler] = {}
"""Operation name → handler: the one registration point of the operation rules (see :func:`handles`)."""


def handles(*names: str) -> Callable[[Handler], Handler]:
    """Register the decorated handler for the torch operations called ``names`` (a name is registered once)."""

    def register(handler: Handler) -> Handler:
        for name in names:
            if name in OPERATION_RULES:
                raise ValueError(f"operation {name!r} already has a rule ({OPERATION_RULES[name].__name__})")
            OPERATION_RULES[name] = handler
        return handler

    return register


def requires_grad(x: Any) -> bool:
    """Input-dependent: a floating tensor that requires grad (true only while the parameters are frozen)."""
    return isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point()


#: packages whose autograd Functions are not foreign: our rules, and torch's own (checkpointing re-runs the
#: forward under the rules itself)
_OWN_FUNCTIONS = frozenset({__name__.split(".")[0], "torch"})


def foreign_function(tensor: Any) -> type | None:
    """The custom ``torch.autograd.Function`` (not one of attnlrp's rules) whose output ``tensor`` is, if any.

    Such a Function runs its own forward without grad and brings its own backward, and ``Function.apply``
    passes the rule mode unseen: no rule sees the operations inside, so they are noticed from the outside."""
    cls = getattr(getattr(tensor, "grad_fn", None), "_forward_cls", None)
    if cls is None or cls.__module__.split(".")[0] in _OWN_FUNCTIONS or issubclass(cls, RuleFunction):
        return None
    return cls


def _any_output_requires_grad(out: Any) -> bool:
    if isinstance(out, torch.Tensor):
        return requires_grad(out)
    if isinstance(out, (tuple, list)):
        return any(requires_grad(o) for o in out)
    return False


def _flat_tensors(args: Iterable[Any]) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found.extend(t for t in a if isinstance(t, torch.Tensor))
    return found


def unruled(state: RuleState, call: Call) -> Any:
    """An operation without a rule: run it, and flag it when it mixes input-dependent tensors into its output."""
    out = call.run()
    if _any_output_requires_grad(out) and any(requires_grad(t) for t in _flat_tensors(call.args)):
        state.flag(call.name or repr(call.func))
    return out


class RuleMode(TorchFunctionMode):
    """Routes each torch call made by one model's modules to its rule."""

    def __init__(self, state: RuleState) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        call = Call(func, getattr(func, "__name__", ""), tuple(args), kwargs or {})
        handler = OPERATION_RULES.get(call.name)
        out = handler(self.state, call) if handler is not None else NOT_APPLICABLE
        if out is NOT_APPLICABLE:
            out = unruled(self.state, call)
        if _any_output_requires_grad(out):  # reading .shape, .dtype or .is_floating_point() consumes nothing
            for tensor in _flat_tensors(call.args):
                if foreign_function(tensor) is not None:  # made inside a module and consumed there: no hook saw it
                    self.state.report_function(tensor)
        return out
