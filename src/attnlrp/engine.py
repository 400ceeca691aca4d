"""Applying the rules to one model instance, reversibly, by the kinds of operation it runs.

``LRPContext(model, method)`` is a context manager. While it is open, and only while one of this model's
modules is running, a ``TorchFunctionMode`` looks at every torch call and applies the rule for its kind:
products of two input-dependent tensors, softmax, fused attention, norm statistics, divisions by an
input-dependent tensor, functional activations. Activation *modules* get the identity rule as a whole.
Nothing is patched at class or process level; on exit every hook is removed and every flag restored, so the
model's outputs are bit-identical to before.

"Input-dependent" means "requires grad": that is only true while the parameters are frozen, which the
context does (and undoes).
"""

from __future__ import annotations

import types
from contextlib import AbstractContextManager
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from . import rules
from .audit import Audit, Ledger, UnhandledOp, UnhandledOperationError, _SharedSink

METHODS = ("attnlrp", "cp-lrp", "input-x-gradient", "gradient")
LRP_METHODS = ("attnlrp", "cp-lrp")

_ROLE = "_attnlrp_role"  # tensor attribute: "softmax" (attention probabilities) or "activation" (a gate)
_MISSING = object()

# Operations that are linear in their input-dependent arguments (or merely move, select or cast them).
LINEAR_OPS = frozenset(
    """
    __getitem__ __setitem__ __get__ neg __neg__ contiguous expand expand_as mean sum reshape view view_as to type float double half bfloat16
    transpose permute t stack hstack vstack linear dropout embedding conv1d conv2d conv3d
    addmm flatten unflatten squeeze unsqueeze split split_with_sizes chunk tensor_split narrow select
    index_select gather masked_fill masked_fill_ where pad roll flip clone detach repeat repeat_interleave tile
    unbind movedim moveaxis swapaxes swapdims __pos__ copy_ zero_ fill_ index_add index_copy scatter scatter_add
    cumsum diagonal tril triu new_zeros new_empty new_ones zeros_like ones_like empty_like full_like
    as_strided unfold requires_grad_ retain_grad cpu cuda pin_memory narrow_copy index_put index_put_ type_as
    index_add_ topk sort
    """.split()
)

PRODUCT_OPS = frozenset(
    "mul mul_ __mul__ __rmul__ __imul__ multiply matmul __matmul__ __rmatmul__ bmm mm einsum _grouped_mm grouped_mm".split()
)
ADDITION_OPS = frozenset("add __add__ __radd__ __iadd__ add_ sub __sub__ __rsub__ __isub__ sub_".split())
DIVISION_OPS = frozenset("div __truediv__ __itruediv__ div_ true_divide divide".split())
SOFTMAX_OPS = frozenset({"softmax"})
ATTENTION_OPS = frozenset({"scaled_dot_product_attention"})
ACTIVATION_OPS = frozenset(
    "gelu silu tanh sigmoid relu softplus elu leaky_relu mish hardswish hardsigmoid selu celu relu6 gelu_".split()
)
NORM_STATISTIC_OPS = frozenset(
    "rsqrt sqrt pow __pow__ square var std var_mean std_mean norm vector_norm reciprocal".split()
)
FUNCTIONAL_NORMS = frozenset({"layer_norm", "rms_norm", "normalize"})
CONCATENATION_OPS = frozenset("cat concat concatenate".split())
ROLE_PRESERVING_OPS = frozenset(
    "to type type_as float half bfloat16 double contiguous dropout clone view reshape __getitem__ transpose permute "
    "expand".split()
)

_ACTIVATION_MODULE_HOMES = ("transformers.activations", "torch.nn.modules.activation")
_NOT_ELEMENTWISE = {"Softmax", "Softmin", "LogSoftmax", "Softmax2d", "MultiheadAttention", "GLU", "ClassInstantier"}


def is_activation_module(module: nn.Module) -> bool:
    """Element-wise activation layers: those of torch.nn and transformers.activations (GELU, SiLU, tanh…)."""
    cls = type(module)
    return cls.__module__ in _ACTIVATION_MODULE_HOMES and cls.__name__ not in _NOT_ELEMENTWISE


def is_norm_module(module: nn.Module) -> bool:
    """Layers that divide by a statistic of their own input: LayerNorm, RMSNorm and their per-model variants."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
        return True
    return "norm" in type(module).__name__.lower() and not list(module.children())


def _requires_grad(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point()


def _any_output_requires_grad(out: Any) -> bool:
    if isinstance(out, torch.Tensor):
        return _requires_grad(out)
    if isinstance(out, (tuple, list)):
        return any(_requires_grad(o) for o in out)
    return False


def _flat_tensors(args: Iterable[Any]) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            found.append(a)
        elif isinstance(a, (list, tuple)):
            found.extend(t for t in a if isinstance(t, torch.Tensor))
    return found


class _RuleMode(TorchFunctionMode):
    """Intercepts torch calls made by one model's modules and routes each to its rule."""

    def __init__(self, context: "LRPContext") -> None:
        super().__init__()
        self.ctx = context

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        ctx = self.ctx
        if name in LINEAR_OPS:
            out = func(*args, **kwargs)
            if name in ROLE_PRESERVING_OPS and args and isinstance(out, torch.Tensor):
                role = getattr(args[0], _ROLE, None)
                if role is not None:
                    setattr(out, _ROLE, role)
            return out
        if name in ADDITION_OPS:
            return ctx.addition(func, name, args, kwargs)
        if name in CONCATENATION_OPS:
            return ctx.concatenation(func, name, args, kwargs)
        if name in PRODUCT_OPS:
            return ctx.product(func, name, args, kwargs)
        if name in DIVISION_OPS:
            return ctx.division(func, name, args, kwargs)
        if name in SOFTMAX_OPS and args and _requires_grad(args[0]):
            ctx.audit.cover("softmax (plain gradient)", name)
            out = rules.softmax_rule(func, args[0], *args[1:], sink=ctx.ledger, **kwargs)
            setattr(out, _ROLE, "softmax")
            return out
        if name in ATTENTION_OPS:
            ctx.audit.cover(f"attention ({ctx.method})", name)
            return rules.attention_rule(func, *args, method=ctx.method, sink=ctx.ledger, **kwargs)
        if name in ACTIVATION_OPS and args and _requires_grad(args[0]):
            ctx.audit.cover("identity", name)
            out = rules.identity_rule(lambda t: func(t, *args[1:], **kwargs), args[0], sink=ctx.ledger)
            setattr(out, _ROLE, "activation")
            return out
        if name in FUNCTIONAL_NORMS and args and _requires_grad(args[0]):
            return ctx.functional_norm(name, args, kwargs)
        if name in NORM_STATISTIC_OPS and ctx.norm_depth > 0:
            ctx.audit.cover("norm statistic held constant", f"{name} in {ctx.current_module_type()}")
            return func(*(a.detach() if isinstance(a, torch.Tensor) else a for a in args), **kwargs)
        out = func(*args, **kwargs)
        if _any_output_requires_grad(out) and any(_requires_grad(t) for t in _flat_tensors(args)):
            ctx.flag(name or repr(func))
        return out


class LRPContext(AbstractContextManager):
    """Switch the rules of ``method`` on for one model; everything is undone on exit.

    Inside the context, run the model on ``inputs_embeds`` that require grad and differentiate the explained
    output: ``inputs_embeds * grad`` is the relevance. ``audit`` and ``ledger`` report on the passes run
    inside. ``absorber_leaves`` holds tensors (additive embeddings such as positions) whose relevance the
    ledger needs: pass them to ``torch.autograd.grad`` as extra inputs, or use ``.backward()``.

    ``strict=True`` raises ``UnhandledOperationError`` at the first non-linear operation without a rule.
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "attnlrp",
        *,
        strict: bool = False,
        gamma: Mapping[str | type, float] | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.method = method
        self.strict = strict
        self.gamma = _check_gamma(gamma)
        self.audit = Audit()
        self.ledger = Ledger()
        self.absorber_leaves: list[torch.Tensor] = []
        #: rows of the explained batch, when known: additive embeddings computed once for all rows are then
        #: expanded to one copy per row, so the ledger stays per row
        self.batch_size: int | None = None
        self.norm_depth = 0
        self._hooked_biases: set[int] = set()
        self._module_stack: list[tuple[str, nn.Module, bool]] = []  # (name, module, entered the rule mode)
        self._mode = _RuleMode(self)
        self._mode_depth = 0
        self._undo: list[Callable[[], None]] = []
        self._active = False

    # ----------------------------------------------------------------------------------------- enter / exit
    def __enter__(self) -> "LRPContext":
        if self._active:
            raise RuntimeError("this LRPContext is already open")
        try:
            self._freeze_and_evaluate()
            self._install_hooks()
        except BaseException:
            self._restore()
            raise
        self._active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        while self._mode_depth > 0:  # only if a forward was interrupted in a way hooks could not see
            self._mode.__exit__(None, None, None)
            self._mode_depth -= 1
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self._module_stack.clear()
        self.norm_depth = 0
        self._active = False

    def _freeze_and_evaluate(self) -> None:
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        modes = [(m, m.training) for m in self.model.modules()]

        def undo() -> None:
            for p, flag in flags:
                p.requires_grad_(flag)
            for m, training in modes:
                m.training = training

        self._undo.append(undo)
        for p, _ in flags:
            p.requires_grad_(False)
        self.model.eval()
        for module in self.model.modules():
            if _checkpointed(module):
                # transformers checkpoints a layer only in training mode; dropout lives in its (eval) children
                module.training = True

    def _install_hooks(self) -> None:
        input_embedding = _input_embedding_of(self.model)
        use_rules = self.method in LRP_METHODS
        for name, module in self.model.named_modules():
            is_norm = use_rules and is_norm_module(module)
            pre = module.register_forward_pre_hook(self._make_pre_hook(name, module, is_norm))
            post = module.register_forward_hook(self._make_post_hook(is_norm), always_call=True)
            self._undo.extend([pre.remove, post.remove])
            if use_rules and _checkpointed(module):
                self._rule_recomputation(module)
            if use_rules and is_activation_module(module):
                self._override_forward(module, self._identity_forward(module))
            gamma = self._gamma_for(module) if use_rules else None
            if gamma is not None:
                self._override_forward(module, self._gamma_forward(module, gamma))
                continue  # the γ-rule reports what the bias absorbs itself
            if isinstance(module, nn.Embedding) and module is not input_embedding:
                handle = module.register_forward_hook(self._absorbing_embedding_hook)
                self._undo.append(handle.remove)
            bias = module._parameters.get("bias") if "bias" in module._parameters else None
            if isinstance(bias, torch.Tensor) and bias.dim() == 1 and not is_activation_module(module):
                handle = module.register_forward_hook(self._bias_hook(bias, channel_dim=_bias_dim(module)))
                self._undo.append(handle.remove)
                self._hooked_biases.add(id(bias))
        self._undo.append(self._hooked_biases.clear)

    def _override_forward(self, module: nn.Module, forward: Callable) -> None:
        """Per-instance forward; restores whatever instance attribute was there before.

        A module dispatched by accelerate keeps its own computation in ``_old_forward`` and wraps it in
        ``forward`` (load the offloaded weights, run, offload again): the override takes the inner slot, so the
        wrapper still materialises the weights our forward reads.
        """
        slot = _forward_slot(module)
        previous = module.__dict__.get(slot, _MISSING)

        def undo() -> None:
            if previous is _MISSING:
                module.__dict__.pop(slot, None)
            else:
                setattr(module, slot, previous)

        self._undo.append(undo)
        setattr(module, slot, forward)

    def _rule_recomputation(self, module: nn.Module) -> None:
        """Gradient checkpointing re-runs a layer's forward during backward, outside any forward hook: wrap the
        layer's checkpoint function (per instance, restored on exit) so that the re-run is ruled too."""
        original = module.__dict__["_gradient_checkpointing_func"]

        def ruled(function: Callable) -> Callable:
            def run(*args: Any, **kwargs: Any) -> Any:
                if self._mode_depth > 0:
                    return function(*args, **kwargs)  # the first forward: the rules are on already
                self._mode.__enter__()  # the recomputation during backward
                self._mode_depth += 1
                try:
                    return function(*args, **kwargs)
                finally:
                    self._mode.__exit__(None, None, None)
                    self._mode_depth -= 1

            return run

        module._gradient_checkpointing_func = lambda function, *args, **kwargs: original(ruled(function), *args, **kwargs)
        self._undo.append(lambda: setattr(module, "_gradient_checkpointing_func", original))

    # ------------------------------------------------------------------------------------------------ hooks
    def _make_pre_hook(self, name: str, module: nn.Module, is_norm: bool):
        def pre_hook(mod: nn.Module, args: Any) -> None:
            entered = self.method in LRP_METHODS and self._mode_depth == 0
            if entered:  # the outermost of this model's modules: the rules are on while it runs
                self._mode.__enter__()
                self._mode_depth += 1
            self._module_stack.append((name, module, entered))
            if is_norm:
                self.norm_depth += 1

        return pre_hook

    def _make_post_hook(self, is_norm: bool):
        def post_hook(mod: nn.Module, args: Any, output: Any) -> None:
            if is_norm:
                self.norm_depth -= 1
            entered = self._module_stack.pop()[2] if self._module_stack else False
            if entered and self._mode_depth > 0:
                self._mode.__exit__(None, None, None)
                self._mode_depth -= 1

        return post_hook

    def _identity_forward(self, module: nn.Module) -> Callable:
        original = getattr(module, _forward_slot(module))
        label = type(module).__name__

        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if not _requires_grad(x):
                return original(x, *args, **kwargs)
            self.audit.cover("identity", label)
            y = rules.identity_rule(lambda t: original(t, *args, **kwargs), x, sink=self.ledger)
            setattr(y, _ROLE, "activation")
            return y

        return forward

    def _gamma_for(self, module: nn.Module) -> float | None:
        for key, value in self.gamma.items():
            matches = isinstance(module, key) if isinstance(key, type) else type(module).__name__ == key
            if matches:
                if not isinstance(module, GAMMA_MODULES):
                    raise TypeError(
                        f"the γ-rule applies to {', '.join(c.__name__ for c in GAMMA_MODULES)} layers, not "
                        f"{type(module).__name__}"
                    )
                return value
        return None

    def _gamma_forward(self, module: nn.Module, gamma: float) -> Callable:
        original = getattr(module, _forward_slot(module))
        linear = F.linear if isinstance(module, nn.Linear) else module._conv_forward
        label = f"{type(module).__name__} (γ={gamma})"

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not _requires_grad(x):
                return original(x)
            self.audit.cover("γ-rule", label)
            return rules.gamma_rule(linear, x, module.weight, module.bias, gamma, sink=self.ledger)

        return forward

    def _absorbing_embedding_hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        """Additive embeddings (positions, token types, relative position bias) take relevance like a bias."""
        if not torch.is_grad_enabled() or not output.is_floating_point():
            return output
        rows = self.batch_size
        if rows is not None and output.dim() >= 2 and output.shape[0] == 1 and rows > 1:
            output = output.expand(rows, *output.shape[1:])  # positions computed once for the whole batch
        leaf = output.detach().requires_grad_(True)
        self.absorber_leaves.append(leaf)
        self.audit.cover("absorbs like a bias", type(module).__name__)
        batched = rows is None or (output.dim() >= 2 and output.shape[0] == rows)
        return rules.tap(leaf, self.ledger if batched else _SharedSink(self.ledger), "embeddings", +1.0)

    def _bias_hook(self, bias: torch.Tensor, channel_dim: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            channel = channel_dim % output.dim()
            b = _materialised(module, "bias").detach()

            def absorb(g: torch.Tensor) -> None:
                # Σ b_c ĝ_{…c…} per row: sum ĝ over positions first, then one small dot product
                others = [d for d in range(1, g.dim()) if d != channel]
                per_channel = g.sum(dim=others) if others else g
                dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
                self.ledger.absorb("bias", (per_channel.to(dtype) @ b.to(dtype)).reshape(-1))

            output.register_hook(absorb)

        return hook

    # ----------------------------------------------------------------------------------------------- rules
    def addition(self, func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
        """A sum is linear, but a constant addend (ALiBi, a class token, a mask) absorbs ``c · ĝ``: count it."""
        out = func(*args, **kwargs)
        if len(args) < 2 or not isinstance(out, torch.Tensor) or not out.requires_grad:
            return out
        first, second = args[0], args[1]
        if _requires_grad(first) == _requires_grad(second):
            return out  # both input-dependent (a residual sum), or neither
        constant = second if _requires_grad(first) else first
        if not isinstance(constant, (torch.Tensor, int, float)) or id(constant) in self._hooked_biases:
            return out  # module biases are counted by their module's hook
        if isinstance(constant, torch.Tensor) and not constant.is_floating_point():
            return out
        sign = -1.0 if name in ("sub", "__sub__", "__isub__", "sub_") and constant is second else 1.0
        alpha = kwargs.get("alpha", 1.0)
        if isinstance(constant, torch.Tensor):
            constant = constant.detach()
        elif constant == 0:
            return out
        factor = sign * (alpha if constant is second else 1.0)
        self.audit.cover("constant addend absorbs", name)
        ledger = self.ledger

        def absorb(grad: torch.Tensor) -> None:
            c = constant if isinstance(constant, torch.Tensor) else torch.tensor(constant, dtype=grad.dtype)
            ledger.absorb("constants", factor * rules.row_relevance(c.to(grad.device).expand_as(grad), grad))

        out.register_hook(absorb)
        return out

    def concatenation(self, func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
        """Joining is linear, but a constant piece (ViT's class token) takes relevance: count it."""
        out = func(*args, **kwargs)
        pieces = args[0] if args else kwargs.get("tensors", ())
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if not isinstance(out, torch.Tensor) or not out.requires_grad or dim % out.dim() == 0:
            return out
        constants, offset = [], 0
        for piece in pieces:
            if piece.dim() != out.dim():
                continue  # the legacy empty 1-D tensor that cat skips
            size = piece.shape[dim]
            if not _requires_grad(piece) and piece.is_floating_point():
                constants.append((offset, size, piece.detach()))
            offset += size
        if not constants:
            return out
        self.audit.cover("constant piece absorbs", name)
        ledger = self.ledger

        def absorb(grad: torch.Tensor) -> None:
            for start, size, piece in constants:
                part = grad.narrow(dim, start, size)
                ledger.absorb("constants", rules.row_relevance(piece.expand_as(part), part))

        out.register_hook(absorb)
        return out

    def product(self, func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
        if name == "einsum":
            equation, operands = args[0], args[1:]
            if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
                operands = tuple(operands[0])
        else:
            equation, operands = None, args[:2]
        dependent = [i for i, a in enumerate(operands) if _requires_grad(a)]
        if len(dependent) < 2:
            return func(*args, **kwargs)  # linear: one factor is a constant
        if name.endswith("_") and not name.endswith("__"):
            out = func(*args, **kwargs)  # an in-place product cannot take the uniform rule
            self.flag(name)
            return out
        if name == "__imul__":
            name, func = "mul", torch.mul  # the rule's result is rebound by `x *= y`
        self.audit.cover(f"product ({self.method})", name)
        operands = list(operands)
        if self.method == "cp-lrp" and any(getattr(operands[i], _ROLE, None) for i in dependent):
            operands = [a.detach() if getattr(a, _ROLE, None) else a for a in operands]
        else:
            share = 1.0 / len(dependent)
            operands = [rules.scale_gradient(a, share) if i in dependent else a for i, a in enumerate(operands)]
        if equation is not None:
            return func(equation, *operands, **kwargs)
        return func(*operands, *args[2:], **kwargs)

    def division(self, func: Callable, name: str, args: tuple, kwargs: dict) -> Any:
        if len(args) >= 2 and _requires_grad(args[1]):
            self.audit.cover("denominator held constant", name)
            return func(args[0], args[1].detach(), *args[2:], **kwargs)
        return func(*args, **kwargs)

    def functional_norm(self, name: str, args: tuple, kwargs: dict) -> torch.Tensor:
        """``F.layer_norm`` / ``F.rms_norm`` / ``F.normalize`` decomposed with their statistic held constant."""
        self.audit.cover("norm statistic held constant", name)
        params = _bind(name, args, kwargs)
        x = params["input"]
        compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        xc = x.to(compute)
        if name == "normalize":
            p, dim, eps = params.get("p", 2.0), params.get("dim", 1), params.get("eps", 1e-12)
            denom = xc.detach().norm(p=p, dim=dim, keepdim=True).clamp_min(eps)
            return (xc / denom).to(x.dtype)
        dims = tuple(range(-len(params["normalized_shape"]), 0))
        eps = params.get("eps")
        if eps is None:
            eps = torch.finfo(compute).eps
        if name == "layer_norm":
            centred = xc - xc.mean(dim=dims, keepdim=True)
            scale = torch.rsqrt(centred.detach().pow(2).mean(dim=dims, keepdim=True) + eps)
        else:
            centred = xc
            scale = torch.rsqrt(xc.detach().pow(2).mean(dim=dims, keepdim=True) + eps)
        y = (centred * scale).to(x.dtype)
        if params.get("weight") is not None:
            y = y * params["weight"]
        if params.get("bias") is not None:
            y = y + params["bias"]
        return y

    # ----------------------------------------------------------------------------------------------- audit
    def current_module_type(self) -> str:
        return type(self._module_stack[-1][1]).__name__ if self._module_stack else type(self.model).__name__

    def flag(self, op: str) -> None:
        name, module, _ = self._module_stack[-1] if self._module_stack else ("", self.model, False)
        unhandled = UnhandledOp(op=op, module=name, module_type=type(module).__name__)
        if self.strict:
            raise UnhandledOperationError(f"non-linear operation without an LRP rule: {unhandled}")
        self.audit.flag(unhandled)


GAMMA_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_gamma(gamma: Mapping[str | type, float] | None) -> dict[str | type, float]:
    """γ per layer type, e.g. ``{"Conv2d": 0.25, "Linear": 0.05}`` (class names or classes)."""
    if gamma is None:
        return {}
    if not isinstance(gamma, Mapping):
        raise TypeError("gamma maps layer types to values, e.g. {'Conv2d': 0.25, 'Linear': 0.05}")
    for key, value in gamma.items():
        if not isinstance(key, (str, type)):
            raise TypeError(f"gamma keys are layer class names or classes, got {key!r}")
        if not isinstance(value, (int, float)) or value < 0 or value != value:
            raise ValueError(f"γ for {key} must be a number ≥ 0, got {value!r}")
    return dict(gamma)


_NORM_SIGNATURES = {
    "layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
    "rms_norm": ("input", "normalized_shape", "weight", "eps"),
    "normalize": ("input", "p", "dim", "eps"),
}


def _bind(name: str, args: tuple, kwargs: dict) -> dict:
    params = dict(zip(_NORM_SIGNATURES[name], args))
    params.update(kwargs)
    if "normalized_shape" in params and isinstance(params["normalized_shape"], int):
        params["normalized_shape"] = (params["normalized_shape"],)
    return params


def _bias_dim(module: nn.Module) -> int:
    """The output dimension a 1-D bias is added along: channels (dim 1) for convolutions, else the last."""
    return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1


def _forward_slot(module: nn.Module) -> str:
    """Where ``module``'s own computation lives: ``_old_forward`` under an accelerate hook, else ``forward``."""
    if "_hf_hook" in module.__dict__ and "_old_forward" in module.__dict__:
        return "_old_forward"
    return "forward"


def _materialised(module: nn.Module, name: str) -> torch.Tensor:
    """A parameter's values, also when accelerate has offloaded it (``meta`` between its forward passes)."""
    tensor = getattr(module, name)
    if tensor.device.type == "meta":
        hook = getattr(module, "_hf_hook", None)
        weights = getattr(hook, "weights_map", None)
        if weights is None:
            raise RuntimeError(f"{type(module).__name__}.{name} is on the meta device and no offload map holds it")
        tensor = weights[name].to(getattr(hook, "execution_device", None) or "cpu")
    return tensor


def _checkpointed(module: nn.Module) -> bool:
    """A transformers layer with gradient checkpointing switched on (``gradient_checkpointing_enable()``)."""
    return bool(module.__dict__.get("gradient_checkpointing")) and "_gradient_checkpointing_func" in module.__dict__


def _input_embedding_of(model: nn.Module) -> nn.Module | None:
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        return None
    try:
        return getter()
    except NotImplementedError:
        return None


def lrp(
    model: nn.Module, method: str = "attnlrp", *, strict: bool = False, gamma: Mapping[str | type, float] | None = None
) -> LRPContext:
    """``with attnlrp.lrp(model): ...`` — the rules of ``method`` on this model, for the block only."""
    return LRPContext(model, method, strict=strict, gamma=gamma)
