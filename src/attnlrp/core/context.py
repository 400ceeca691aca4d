"""Switching a method's rules on for one model instance, reversibly: the lifecycle of the hooks, nothing else.

``LRPContext(model, method)`` is a context manager. While it is open, and only while one of this model's
modules is running, a ``RuleMode`` (``dispatch``) routes every torch call to the rule registered for it
(``handlers``); whole-module rules (activations, γ, biases, additive embeddings) are installed from
``module_rules``; accelerate offloading and gradient checkpointing are handled by ``compat``. Nothing is
patched at class or process level; on exit every hook is removed and every flag restored, so the model's
outputs are bit-identical to before.

The rules act only in the thread that opened the context (and in the recomputation of its checkpointed
layers, wherever autograd runs it): another thread may run the same model plainly meanwhile and gets plain
gradients. One model takes one open context at a time: a second one (nested, or from another thread) is
refused with an ``ExplainError`` rather than mixing two sets of rules.

A ``reusable`` context (what an ``Explainer`` holds) keeps its hooks installed but idle between uses
("parked"): entering it again only freezes the parameters and switches to eval mode, which saves most of the
set-up of each call. Parked hooks do nothing (the rules act only in the owning thread while the context is
open); another context opened on the same model removes them first, and ``close()`` (called when the explainer
is closed or garbage collected) removes them for good.

"Input-dependent" means "requires grad": that is only true while the parameters are frozen, which the
context does (and undoes).
"""

from __future__ import annotations

import threading
import weakref
from contextlib import AbstractContextManager
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import ExplainError
from . import handlers as _handlers  # noqa: F401  (fills the rule table)
from . import module_rules
from .audit import Audit, UnhandledOp, UnhandledOperationError
from .compat import forward_slot, is_checkpointed, rule_recomputation
from .dispatch import RuleMode
from .ledger import Ledger
from .methods import Method, MethodSpec, get_method

_MISSING = object()

#: the open context of each model, so that a second one on the same model is refused
_OPEN: "weakref.WeakKeyDictionary[nn.Module, LRPContext]" = weakref.WeakKeyDictionary()
#: the parked (reusable, closed but still hooked) context of each model, removed when another one opens
_PARKED: "weakref.WeakKeyDictionary[nn.Module, LRPContext]" = weakref.WeakKeyDictionary()
_OPEN_LOCK = threading.Lock()


class LRPContext(AbstractContextManager):
    """Switch the rules of ``method`` on for one model; everything is undone on exit.

    Inside the context, run the model on ``inputs_embeds`` that require grad and differentiate the explained
    output: ``inputs_embeds * grad`` is the relevance. ``audit`` and ``ledger`` report on the passes run
    inside. ``absorber_leaves`` holds tensors (additive embeddings such as positions) whose relevance the
    ledger needs: pass them to ``torch.autograd.grad`` as extra inputs, or use ``.backward()``.
    ``attnlrp.core.ExplainedPass`` does all of that for you.

    ``strict=True`` raises ``UnhandledOperationError`` at the first non-linear operation without a rule.
    ``gamma`` (layer type -> γ) adds the generalised γ-rule on linear/convolution layers.
    ``reusable=True`` parks the hooks on exit instead of removing them (see the module docstring); call
    ``close()`` when done.
    """

    def __init__(
        self,
        model: nn.Module,
        method: MethodSpec = "attnlrp",
        *,
        strict: bool = False,
        gamma: Mapping[str | type, float] | None = None,
        reusable: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.method: Method = get_method(method)
        self.strict = strict
        self.gamma = module_rules.check_gamma(gamma if gamma is not None else self.method.gamma or None)
        if self.gamma and not self.method.uses_rules:
            raise ValueError(f"the γ-rule is an LRP rule: use it with an LRP method, not {self.method.name!r}")
        self.audit = Audit()
        self.ledger = Ledger()
        self.absorber_leaves: list[torch.Tensor] = []
        #: rows of the explained batch, when known: additive embeddings computed once for all rows are then
        #: expanded to one copy per row, so the ledger stays per row
        self.batch_size: int | None = None
        self.norm_depth = 0
        #: ids of the biases a module hook counts (an addition handler must not count them twice)
        self.hooked_biases: set[int] = set()
        self._module_stack: list[tuple[str, nn.Module, bool]] = []  # (name, module, entered the rule mode)
        self._reported_functions: "weakref.WeakSet[Any]" = weakref.WeakSet()  # autograd nodes already flagged
        self._mode = RuleMode(self)
        self._local = threading.local()  # per thread: rule-mode depth, inside a checkpoint recomputation
        self._owner: int | None = None  # the thread that opened the context
        self.reusable = reusable
        self._undo: list[Callable[[], None]] = []  # removes the hooks (kept while parked)
        self._call_undo: list[Callable[[], None]] = []  # restores parameter and training flags (every exit)
        self._installed = False
        self._active = False

    # ----------------------------------------------------------------------------------------- enter / exit
    def __enter__(self) -> "LRPContext":
        if self._active:
            raise RuntimeError("this LRPContext is already open")
        self._claim()
        self._owner = threading.get_ident()
        try:
            self._freeze_and_evaluate()
            if not self._installed:
                self._installed = True
                self._install_hooks()
        except BaseException:
            self._restore(park=False)
            raise
        self.audit.clear()  # a reused context reports on this use only
        self.ledger.reset()
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore(park=self.reusable and exc[0] is None)

    def close(self) -> None:
        """Remove everything, parked hooks included (a no-op when nothing is installed). Not while open."""
        if self._active:
            raise RuntimeError("close() an LRPContext after leaving it, not inside it")
        with _OPEN_LOCK:
            if _PARKED.get(self.model) is self:
                del _PARKED[self.model]
        self._remove_hooks()

    def _restore(self, park: bool) -> None:
        while self._mode_depth > 0:  # only if a forward was interrupted in a way hooks could not see
            self._leave_mode()
        for undo in reversed(self._call_undo):
            undo()
        self._call_undo.clear()
        if not park:
            self._remove_hooks()
        self._module_stack.clear()
        self.norm_depth = 0
        self._active = False
        self._owner = None  # parked hooks are idle from here: the rules act only in the owner's thread
        with _OPEN_LOCK:
            if _OPEN.get(self.model) is self:
                del _OPEN[self.model]
            if park and self._installed:
                _PARKED[self.model] = self

    def _remove_hooks(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self._installed = False

    def _claim(self) -> None:
        """Register as the model's one open context, or refuse clearly."""
        with _OPEN_LOCK:
            other = _OPEN.get(self.model)
            if other is not None:
                where = "in this thread" if other._owner == threading.get_ident() else "in another thread"
                raise ExplainError(
                    f"{type(self.model).__name__} is already being explained by an open lrp() context ({where}, "
                    f"method {other.method.name!r}); one model takes one context at a time: close it first, or "
                    "serialise explanations of a shared model (a lock or a queue), or load a second copy"
                )
            _OPEN[self.model] = self
            parked = _PARKED.pop(self.model, None)
        if parked is not None and parked is not self:
            parked._remove_hooks()  # idle hooks of another context: never two rule sets on one model

    # ------------------------------------------------------------------------------------ thread ownership
    @property
    def _mode_depth(self) -> int:
        return getattr(self._local, "depth", 0)

    @_mode_depth.setter
    def _mode_depth(self, value: int) -> None:
        self._local.depth = value

    def _acts_here(self) -> bool:
        """The rules act in the opening thread, and in a ruled checkpoint recomputation in any thread."""
        return threading.get_ident() == self._owner or getattr(self._local, "recomputing", False)

    def _owned_forward(self, ruled: Callable, original: Callable) -> Callable:
        def forward(*args: Any, **kwargs: Any) -> Any:
            return (ruled if self._acts_here() else original)(*args, **kwargs)

        return forward

    def _owned_hook(self, hook: Callable) -> Callable:
        def run(*args: Any) -> Any:
            return hook(*args) if self._acts_here() else None

        return run

    def _freeze_and_evaluate(self) -> None:
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        modes = [(m, m.training) for m in self.model.modules()]

        def undo() -> None:
            for p, flag in flags:
                p.requires_grad_(flag)
            for m, training in modes:
                m.training = training

        self._call_undo.append(undo)
        for p, _ in flags:
            p.requires_grad_(False)
        self.model.eval()
        for module in self.model.modules():
            if is_checkpointed(module):
                # transformers checkpoints a layer only in training mode; dropout lives in its (eval) children
                module.training = True

    def _install_hooks(self) -> None:
        if not self.method.uses_rules:
            return  # a plain gradient: parameters frozen and eval mode are all it needs
        input_embedding = _input_embedding_of(self.model)
        functions = module_rules.custom_function_hook(self.audit, self.ledger, self.report_function)
        for name, module in self.model.named_modules():
            is_norm = module_rules.is_norm_module(module)
            pre = module.register_forward_pre_hook(self._owned_hook(self._make_pre_hook(name, module, is_norm)))
            post = module.register_forward_hook(
                self._owned_hook(self._make_post_hook(is_norm, functions)), with_kwargs=True, always_call=True
            )
            self._undo.extend([pre.remove, post.remove])
            if is_checkpointed(module):
                self._undo.append(rule_recomputation(module, self._ruled))
            if module_rules.is_activation_module(module):
                self._override_forward(module, module_rules.identity_forward(module, self.audit, self.ledger))
            gamma = module_rules.gamma_for(module, self.gamma)
            if gamma is not None:
                self._override_forward(module, module_rules.gamma_forward(module, gamma, self.audit, self.ledger))
                continue  # the γ-rule reports what the bias absorbs itself
            if isinstance(module, nn.Embedding) and module is not input_embedding:
                hook = module_rules.absorbing_embedding_hook(
                    self.audit, self.ledger, self.absorber_leaves, lambda: self.batch_size
                )
                self._undo.append(module.register_forward_hook(self._owned_hook(hook)).remove)
            bias = module._parameters.get("bias") if "bias" in module._parameters else None
            if isinstance(bias, torch.Tensor) and bias.dim() == 1 and not module_rules.is_activation_module(module):
                hook = module_rules.bias_hook(self.ledger, channel_dim=module_rules.bias_dim(module))
                self._undo.append(module.register_forward_hook(self._owned_hook(hook)).remove)
                self.hooked_biases.add(id(bias))
        self._undo.append(self.hooked_biases.clear)

    def _override_forward(self, module: nn.Module, forward: Callable) -> None:
        """Per-instance forward in ``module``'s computation slot; restores whatever instance attribute was
        there before."""
        slot = forward_slot(module)
        previous = module.__dict__.get(slot, _MISSING)
        original = getattr(module, slot)

        def undo() -> None:
            if previous is _MISSING:
                module.__dict__.pop(slot, None)
            else:
                setattr(module, slot, previous)

        self._undo.append(undo)
        setattr(module, slot, self._owned_forward(forward, original))

    # ----------------------------------------------------------------------------------------- rule mode
    def _enter_mode(self) -> None:
        self._mode.__enter__()
        self._mode_depth += 1

    def _leave_mode(self) -> None:
        self._mode.__exit__(None, None, None)
        self._mode_depth -= 1

    def _ruled(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` run under the rules: for a checkpointed layer's re-run during backward (which autograd
        may run in another thread). A layer run by another thread's plain forward is left as it is."""
        if not self._acts_here():
            return function

        def run(*args: Any, **kwargs: Any) -> Any:
            if self._mode_depth > 0:
                return function(*args, **kwargs)  # the first forward: the rules are on already
            recomputing = getattr(self._local, "recomputing", False)
            self._local.recomputing = True
            self._enter_mode()
            try:
                return function(*args, **kwargs)
            finally:
                self._leave_mode()
                self._local.recomputing = recomputing

        return run

    def _make_pre_hook(self, name: str, module: nn.Module, is_norm: bool):
        def pre_hook(mod: nn.Module, args: Any) -> None:
            entered = self._mode_depth == 0
            if entered:  # the outermost of this model's modules: the rules are on while it runs
                self._enter_mode()
            self._module_stack.append((name, module, entered))
            if is_norm:
                self.norm_depth += 1

        return pre_hook

    def _make_post_hook(self, is_norm: bool, functions: Callable):
        def post_hook(mod: nn.Module, args: Any, kwargs: dict, output: Any) -> Any:
            try:  # while this module is still on top of the stack, so that a report names it
                return functions(mod, args, kwargs, output)
            finally:
                if is_norm:
                    self.norm_depth -= 1
                entered = self._module_stack.pop()[2] if self._module_stack else False
                if entered and self._mode_depth > 0:
                    self._leave_mode()

        return post_hook

    # ----------------------------------------------------------------------------------------------- audit
    def current_module_type(self) -> str:
        """The class name of the innermost module running now (the model's own when none is)."""
        return type(self._module_stack[-1][1]).__name__ if self._module_stack else type(self.model).__name__

    def report_function(self, tensor: torch.Tensor) -> None:
        """A custom autograd Function's output that no rule covers: flag it once (where it is first seen)."""
        node = tensor.grad_fn
        if node is None or node in self._reported_functions:
            return
        self._reported_functions.add(node)
        function = getattr(node, "_forward_cls", type(node))  # a custom Function's backward node names its Function
        self.flag(f"autograd Function {function.__name__} (its own backward, no rule)")

    def flag(self, op: str) -> None:
        """A non-linear operation ran without a rule: record it (or raise, in strict mode)."""
        name, module, _ = self._module_stack[-1] if self._module_stack else ("", self.model, False)
        unhandled = UnhandledOp(op=op, module=name, module_type=type(module).__name__)
        if self.strict:
            raise UnhandledOperationError(f"non-linear operation without an LRP rule: {unhandled}")
        self.audit.flag(unhandled)


def open_context(model: nn.Module) -> LRPContext | None:
    """The context open on ``model`` right now, if any (observers such as ``localise`` read its ledger)."""
    with _OPEN_LOCK:
        return _OPEN.get(model)


def _input_embedding_of(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        return None
    try:
        return getter()
    except NotImplementedError:
        return None


def lrp(
    model: nn.Module,
    method: MethodSpec = "attnlrp",
    *,
    strict: bool = False,
    gamma: Mapping[str | type, float] | None = None,
) -> LRPContext:
    """``with attnlrp.lrp(model): ...`` — the rules of ``method`` on this model, for the block only."""
    return LRPContext(model, method, strict=strict, gamma=gamma)
