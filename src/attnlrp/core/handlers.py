"""The operation rules: each registers itself for the torch operations it handles (``@handles``).

A handler decides *whether* and *how* a rule applies to one call (which operands are input-dependent, what a
constant absorbs) and delegates the gradient arithmetic to the small autograd functions of ``rules``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import closed_forms, rules
from .dispatch import NOT_APPLICABLE, OPERATION_RULES, ROLE, Call, RuleState, handles, requires_grad

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
# Linear operations whose output is still attention probabilities / a gate when their input is one
ROLE_PRESERVING_OPS = frozenset(
    "to type type_as float half bfloat16 double contiguous dropout clone view reshape __getitem__ transpose permute "
    "expand".split()
)
PRODUCT_OPS = (
    "mul mul_ __mul__ __rmul__ __imul__ multiply matmul __matmul__ __rmatmul__ bmm mm einsum _grouped_mm grouped_mm"
).split()
ADDITION_OPS = "add __add__ __radd__ __iadd__ add_ sub __sub__ __rsub__ __isub__ sub_".split()
SUBTRACTION_OPS = frozenset({"sub", "__sub__", "__isub__", "sub_"})
DIVISION_OPS = "div __truediv__ __itruediv__ div_ true_divide divide".split()
ACTIVATION_OPS = (
    "gelu silu tanh sigmoid relu softplus elu leaky_relu mish hardswish hardsigmoid selu celu relu6 gelu_".split()
)
NORM_STATISTIC_OPS = "rsqrt sqrt pow __pow__ square var std var_mean std_mean norm vector_norm reciprocal".split()
FUNCTIONAL_NORMS = ("layer_norm", "rms_norm", "normalize")
CONCATENATION_OPS = "cat concat concatenate".split()


@handles(*sorted(LINEAR_OPS))
def linear(state: RuleState, call: Call) -> Any:
    """Linear maps, moves and casts pass relevance on unchanged; casts and views keep a softmax/gate role."""
    out = call.run()
    if call.name in ROLE_PRESERVING_OPS and call.args and isinstance(out, torch.Tensor):
        role = getattr(call.args[0], ROLE, None)
        if role is not None:
            setattr(out, ROLE, role)
    return out


@handles(*ADDITION_OPS)
def addition(state: RuleState, call: Call) -> Any:
    """A sum is linear, but a constant addend (ALiBi, a class token, a mask) absorbs ``c · ĝ``: count it."""
    args, kwargs = call.args, call.kwargs
    out = call.run()
    if len(args) < 2 or not isinstance(out, torch.Tensor) or not out.requires_grad:
        return out
    first, second = args[0], args[1]
    if requires_grad(first) == requires_grad(second):
        return out  # both input-dependent (a residual sum), or neither
    constant = second if requires_grad(first) else first
    if not isinstance(constant, (torch.Tensor, int, float)) or id(constant) in state.hooked_biases:
        return out  # module biases are counted by their module's hook
    if isinstance(constant, torch.Tensor) and not constant.is_floating_point():
        return out
    sign = -1.0 if call.name in SUBTRACTION_OPS and constant is second else 1.0
    alpha = kwargs.get("alpha", 1.0)
    if isinstance(constant, torch.Tensor):
        constant = constant.detach()
    elif constant == 0:
        return out
    factor = sign * (alpha if constant is second else 1.0)
    state.audit.cover("constant addend absorbs", call.name)
    ledger = state.ledger

    def absorb(grad: torch.Tensor) -> None:
        c = constant if isinstance(constant, torch.Tensor) else torch.tensor(constant, dtype=grad.dtype)
        ledger.absorb("constants", factor * rules.row_relevance(c.to(grad.device).expand_as(grad), grad))

    out.register_hook(absorb)
    return out


@handles(*CONCATENATION_OPS)
def concatenation(state: RuleState, call: Call) -> Any:
    """Joining is linear, but a constant piece (ViT's class token) takes relevance: count it."""
    args, kwargs = call.args, call.kwargs
    out = call.run()
    pieces = args[0] if args else kwargs.get("tensors", ())
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(out, torch.Tensor) or not out.requires_grad or dim % out.dim() == 0:
        return out
    constants, offset = [], 0
    for piece in pieces:
        if piece.dim() != out.dim():
            continue  # the legacy empty 1-D tensor that cat skips
        size = piece.shape[dim]
        if not requires_grad(piece) and piece.is_floating_point():
            constants.append((offset, size, piece.detach()))
        offset += size
    if not constants:
        return out
    state.audit.cover("constant piece absorbs", call.name)
    ledger = state.ledger

    def absorb(grad: torch.Tensor) -> None:
        for start, size, piece in constants:
            part = grad.narrow(dim, start, size)
            ledger.absorb("constants", rules.row_relevance(piece.expand_as(part), part))

    out.register_hook(absorb)
    return out


@handles(*PRODUCT_OPS)
def product(state: RuleState, call: Call) -> Any:
    """Products of input-dependent tensors: the uniform rule (each of n factors gets 1/n of the gradient), or,
    for a method that holds attention and gates constant, the softmax/gate factor detached."""
    name, func, args, kwargs = call.name, call.func, call.args, call.kwargs
    if name == "einsum":
        equation, operands = args[0], args[1:]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = tuple(operands[0])
    else:
        equation, operands = None, args[:2]
    dependent = [i for i, a in enumerate(operands) if requires_grad(a)]
    if len(dependent) < 2:
        return call.run()  # linear: one factor is a constant
    if name.endswith("_") and not name.endswith("__"):
        out = call.run()  # an in-place product cannot take the uniform rule
        state.flag(name)
        return out
    if name == "__imul__":
        name, func = "mul", torch.mul  # the rule's result is rebound by `x *= y`
    state.audit.cover(f"product ({state.method.name})", name)
    held = [i for i in dependent if _held_constant(state, operands[i])]
    if held:
        ruled = [a.detach() if i in held else a for i, a in enumerate(operands)]
    else:
        share = 1.0 / len(dependent)
        ruled = [rules.scale_gradient(a, share) if i in dependent else a for i, a in enumerate(operands)]
    if equation is not None:
        return func(equation, *ruled, **kwargs)
    return func(*ruled, *args[2:], **kwargs)


#: which of a Method's settings decides how a factor with a role is treated in a product
_ROLE_SETTING = {"softmax": "attention", "activation": "gates"}


def _held_constant(state: RuleState, operand: Any) -> bool:
    """A factor that is attention probabilities (or a gate) under a method that holds those constant."""
    setting = _ROLE_SETTING.get(getattr(operand, ROLE, None) or "")
    return setting is not None and getattr(state.method, setting) == "constant"


@handles(*DIVISION_OPS)
def division(state: RuleState, call: Call) -> Any:
    """A division by an input-dependent tensor holds the denominator constant (a normalisation)."""
    args = call.args
    if len(args) >= 2 and requires_grad(args[1]):
        state.audit.cover("denominator held constant", call.name)
        return call.run(args[0], args[1].detach(), *args[2:], **call.kwargs)
    return call.run()


@handles("softmax")
def softmax(state: RuleState, call: Call) -> Any:
    """The softmax keeps the plain gradient (AttnLRP's rule); what it absorbs goes to the ledger."""
    args = call.args
    if not args or not requires_grad(args[0]):
        return NOT_APPLICABLE
    state.audit.cover("softmax (plain gradient)", call.name)
    out = rules.softmax_rule(call.func, args[0], *args[1:], sink=state.ledger, **call.kwargs)
    setattr(out, ROLE, "softmax")
    return out


@handles("scaled_dot_product_attention")
def fused_attention(state: RuleState, call: Call) -> Any:
    """Fused attention (any SDPA backend) as a whole: see ``rules.attention_rule``."""
    state.audit.cover(f"attention ({state.method.name})", call.name)
    return rules.attention_rule(
        call.func, *call.args, holds_attention_constant=state.method.attention == "constant", sink=state.ledger,
        **call.kwargs,
    )


@handles(*ACTIVATION_OPS)
def activation(state: RuleState, call: Call) -> Any:
    """Element-wise activations take the identity rule; their output is marked as a gate."""
    args = call.args
    if not args or not requires_grad(args[0]):
        return NOT_APPLICABLE
    state.audit.cover("identity", call.name)
    out = rules.identity_rule(lambda t: call.func(t, *args[1:], **call.kwargs), args[0], sink=state.ledger,
                              ratio=closed_forms.functional_ratio(call.name, call.kwargs) if len(args) == 1 else None)
    setattr(out, ROLE, "activation")
    return out


@handles(*NORM_STATISTIC_OPS)
def norm_statistic(state: RuleState, call: Call) -> Any:
    """Inside a norm layer, the statistic it divides by is held constant."""
    if state.norm_depth <= 0:
        return NOT_APPLICABLE
    state.audit.cover("norm statistic held constant", f"{call.name} in {state.current_module_type()}")
    return call.run(*(a.detach() if isinstance(a, torch.Tensor) else a for a in call.args), **call.kwargs)


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


@handles(*FUNCTIONAL_NORMS)
def functional_norm(state: RuleState, call: Call) -> Any:
    """``F.layer_norm`` / ``F.rms_norm`` / ``F.normalize`` decomposed with their statistic held constant."""
    if not call.args or not requires_grad(call.args[0]):
        return NOT_APPLICABLE
    name = call.name
    state.audit.cover("norm statistic held constant", name)
    params = _bind(name, call.args, call.kwargs)
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


_ADD_PRODUCT_SIGNATURE = ("input", "batch1", "batch2")


@handles("baddbmm", "addbmm")
def add_product(state: RuleState, call: Call) -> Any:
    """``beta · input + alpha · (batch1 @ batch2)`` (BLOOM's ALiBi attention scores): the product takes the
    product rule and the addend is counted like any addend, by running the two parts through their own rules."""
    params = dict(zip(_ADD_PRODUCT_SIGNATURE, call.args))
    params.update(call.kwargs)
    if not (requires_grad(params.get("batch1")) and requires_grad(params.get("batch2"))):
        return NOT_APPLICABLE  # linear in its input-dependent arguments: as it is
    products: dict[str, Callable[..., torch.Tensor]] = {"baddbmm": torch.bmm,
                                                        "addbmm": lambda a, b: torch.bmm(a, b).sum(0)}
    product_of = products[call.name]
    name = "bmm" if call.name == "baddbmm" else "addbmm"
    product = OPERATION_RULES["bmm"](state, Call(product_of, name, (params["batch1"], params["batch2"]), {}))
    beta, alpha = params.get("beta", 1), params.get("alpha", 1)
    scaled = product * alpha if alpha != 1 else product
    addend = params["input"] * beta if beta != 1 else params["input"]
    return addition(state, Call(torch.add, "add", (addend, scaled), {}))
