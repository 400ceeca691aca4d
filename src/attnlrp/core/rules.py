"""The AttnLRP rules as autograd functions, in gradient × input form (see docs/design.md).

Relevance of a tensor ``a`` is ``a ⊙ ĝ(a)`` where ``ĝ`` is a *modified* gradient. Every function here changes
how ``ĝ`` flows backwards through one kind of operation; the forward pass is never changed. Each function is
small on purpose: it sits beside a closed-form oracle in ``tests/test_rules.py``.

Rules that absorb relevance (softmax, attention as a whole) report what they absorbed to a ``Ledger`` so that
``input relevance + absorbed = explained value`` can be checked.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

STABILISER = 1e-6
"""Denominators smaller than this are replaced by ``±STABILISER`` in the identity rule. Small enough not to
affect conservation measurably (|x| < 1e-6 carries almost no relevance), large enough that ``f(x)/x`` cannot
overflow fp16/bf16 gradients."""


class RuleFunction(torch.autograd.Function):
    """Base class for autograd Functions that implement a rule (subclass it in a plug-in rule): the context
    treats every other custom autograd Function in a model as model code that no rule has seen."""


class AbsorptionSink(Protocol):
    """Where rules report relevance absorbed on the way (implemented by ``attnlrp.core.ledger.Ledger``)."""

    def absorb(self, site: str, amount: torch.Tensor) -> None:
        """Record ``amount`` (one value per leading row of the tensor the rule saw) as absorbed at ``site``."""
        ...


def per_row_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first (the batch), in float64 so ledgers stay exact.

    A tensor of fewer than two dimensions has no batch dimension: it is one row."""
    t = t.double()
    return t.reshape(t.shape[0], -1).sum(dim=1) if t.dim() > 1 else t.sum().reshape(1)


def row_relevance(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``Σ x ⊙ grad`` per row (dim 0) as one batched dot product, accumulated in fp32 at least (fp64 for fp64).

    Cheaper than materialising ``x ⊙ grad`` in fp64; masked logits (``-inf`` with a zero gradient) fall back to
    the exact convention of ``relevance_of``.
    """
    dtype = torch.float64 if x.dtype == torch.float64 or grad.dtype == torch.float64 else torch.float32
    rows = x.shape[0] if x.dim() > 1 else 1
    total = torch.linalg.vecdot(x.reshape(rows, -1).to(dtype), grad.reshape(rows, -1).to(dtype))
    if torch.isnan(total).any():
        return per_row_sum(relevance_of(x, grad))
    return total.double()


def relevance_of(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``x ⊙ grad`` with the convention ``(-inf) · 0 = 0`` (masked logits carry no relevance)."""
    product = x.double() * grad.double()
    return torch.where(grad == 0, torch.zeros((), dtype=product.dtype, device=product.device), product)


class _IdentityRule(torch.autograd.Function):
    """Element-wise non-linearity ``y = f(x)`` with ``R(x) = R(y)``: ``ĝ(x) = ĝ(y) ⊙ f(x)/x``.

    Where ``f(0) ≠ 0`` (sigmoid, softplus) ``f(x)/x`` has a pole at 0; there the rule applies to the centred
    ``f(x) − f(0)`` and the constant ``f(0)`` takes its relevance like a bias (reported to the sink).
    """

    @staticmethod
    def forward(ctx, x, y, offset: float, sink: "AbsorptionSink | None", ratio: "Callable | None" = None):
        half = x.dtype in (torch.float16, torch.bfloat16)
        xs, ys = (x.float(), y.float()) if half else (x, y)
        if ratio is not None:  # the closed form of f(x)/x (attnlrp.core.closed_forms); f(0) = 0
            ctx.save_for_backward(ratio(xs))
        else:
            if offset:
                ys = ys - offset
            # |x| < STABILISER carries almost no relevance; its ratio is taken against STABILISER instead of x
            ctx.save_for_backward(ys / torch.where(xs.abs() < STABILISER, STABILISER, xs))
        ctx.offset, ctx.sink = offset, sink
        return y.detach()  # a detached alias, not a view: the model may modify it in place

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        (ratio,) = ctx.saved_tensors
        if ctx.offset and ctx.sink is not None:
            rows = grad_y.shape[0] if grad_y.dim() > 1 else 1
            ctx.sink.absorb("activation offset", ctx.offset * grad_y.reshape(rows, -1).double().sum(dim=1))
        return (grad_y.to(ratio.dtype) * ratio).to(grad_y.dtype), None, None, None, None


def identity_rule(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sink: AbsorptionSink | None = None,
    *,
    ratio: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Apply the element-wise ``fn`` to ``x`` with the identity rule (``fn`` runs without building a graph).

    ``ratio``: the closed form of ``fn(x)/x`` when it is known (``attnlrp.core.closed_forms``; then ``fn(0) = 0``
    and no division is needed); otherwise the ratio is divided out, with ``fn(0)`` treated as a bias."""
    with torch.no_grad():
        y = fn(x.detach())  # detached: no rule inside the activation's own code sees an input-dependent tensor
        known = ratio is not None or not x.requires_grad
        offset = 0.0 if known else float(fn(torch.zeros(1, dtype=x.dtype, device=x.device))[0])
    if not x.requires_grad:
        return y
    return _IdentityRule.apply(x, y, offset, sink, ratio)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by a constant factor backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.detach()  # a detached alias, not a view: the model may modify it in place

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` unchanged forward, ``factor · ĝ`` backward (only where ``x`` needs a gradient)."""
    if not x.requires_grad or factor == 1.0:
        return x
    return _ScaleGradient.apply(x, factor)


def uniform_product(op: Callable[..., torch.Tensor], a: torch.Tensor, b: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Uniform rule for a product of two input-dependent tensors (``a*b``, ``a@b``, einsum…): each gets half.

    Works for any bilinear ``op`` since halving the gradient of each operand halves its relevance:
    ``R(a) + R(b) = ½R(y) + ½R(y)``.
    """
    return op(scale_gradient(a, 0.5), scale_gradient(b, 0.5), *args, **kwargs)


class _Tap(torch.autograd.Function):
    """Identity forward; backward reports ``sign · Σ x ⊙ ĝ(x)`` per batch row to a sink, the gradient unchanged."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sink: AbsorptionSink, site: str, sign: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.sink, ctx.site, ctx.sign = sink, site, sign
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        ctx.sink.absorb(ctx.site, ctx.sign * row_relevance(x, grad))
        return grad, None, None, None


def tap(x: torch.Tensor, sink: AbsorptionSink | None, site: str, sign: float = 1.0) -> torch.Tensor:
    """Let ``sink`` see the relevance ``x ⊙ ĝ(x)`` that flows through ``x`` (no-op without a sink or gradient)."""
    if sink is None or not x.requires_grad:
        return x
    return _Tap.apply(x, sink, site, sign)


def softmax_rule(
    softmax: Callable[..., torch.Tensor], x: torch.Tensor, *args, sink: AbsorptionSink | None = None, **kwargs
) -> torch.Tensor:
    """AttnLRP softmax rule ``R(x) = x ⊙ (R(s) − s ΣR(s))``: exactly the plain gradient.

    Only the bookkeeping is added: what the softmax absorbs, ``ΣR(s) − ΣR(x)``, goes to ``sink``.
    """
    s = softmax(tap(x, sink, "softmax", -1.0), *args, **kwargs)
    return tap(s, sink, "softmax", +1.0)


def attention_rule(
    sdpa: Callable[..., torch.Tensor],
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *args,
    holds_attention_constant: bool = False,
    sink: AbsorptionSink | None = None,
    **kwargs,
) -> torch.Tensor:
    """Attention as a whole (any fused backend): softmax(q·kᵀ)·v with both products under the uniform rule.

    ``q·kᵀ`` and ``A·v`` each halve their operands' gradients, the softmax keeps the plain gradient, so
    ``ĝ(q)``, ``ĝ(k)`` are scaled by ¼ and ``ĝ(v)`` by ½ at the kernel's inputs. With
    ``holds_attention_constant`` (CP-LRP) the attention probabilities are constants instead: ``q`` and ``k`` get
    no gradient and ``v`` the full one.
    What the attention absorbs (its softmax, an additive mask or bias) is ``R(out) − R(q) − R(k) − R(v) − R(bias)``.
    """
    if args:  # sdpa's positional order: attn_mask, dropout_p, is_causal, scale
        kwargs.update(zip(("attn_mask", "dropout_p", "is_causal", "scale"), args))
    mask = kwargs.get("attn_mask")
    inputs = [query, key, value] + ([mask] if isinstance(mask, torch.Tensor) else [])
    if holds_attention_constant:  # the probabilities are constants: q, k and the mask get no gradient at all
        inputs = [t if i == 2 else t.detach() for i, t in enumerate(inputs)]
    differentiable = [i for i, t in enumerate(inputs) if t.requires_grad]
    if torch.is_grad_enabled() and differentiable:
        factors = tuple(1.0 if holds_attention_constant else (0.25, 0.25, 0.5, 0.5)[i] for i in differentiable)
        for i, t in zip(differentiable, _AttentionInputs.apply(factors, sink, *(inputs[i] for i in differentiable))):
            inputs[i] = t
    query, key, value = inputs[:3]
    if len(inputs) == 4:
        kwargs["attn_mask"] = inputs[3]
    k, v = _shared_heads_expanded(query, key, value, kwargs)
    return tap(sdpa(query, k, v, **kwargs), sink, "attention", +1.0)


class _AttentionInputs(torch.autograd.Function):
    """The differentiable inputs of an attention call (q, k, v, an additive mask) in ONE autograd node: identity
    forward; backward scales each input's gradient by its factor and reports
    ``−Σ R(input)`` to the ledger in one sum. With the tap on the output, the attention absorbs
    ``R(out) − Σ R(input)``: two nodes per attention call instead of seven.

    (One node for the whole call would need a nested autograd graph, which non-reentrant gradient
    checkpointing would recompute a second time.)"""

    @staticmethod
    def forward(ctx, factors: tuple[float, ...], sink: "AbsorptionSink | None", *tensors: torch.Tensor):
        ctx.save_for_backward(*tensors)
        ctx.factors, ctx.sink = factors, sink
        return tuple(t.detach() for t in tensors)  # detached aliases, not views: the model may modify them

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        tensors = ctx.saved_tensors
        scaled = [None if g is None else (g if f == 1.0 else g * f) for g, f in zip(grads, ctx.factors)]
        if ctx.sink is not None:
            rows = [row_relevance(t, g) for t, g in zip(tensors, scaled) if g is not None]
            if rows and all(r.shape == rows[0].shape for r in rows):
                ctx.sink.absorb("attention", -torch.stack(rows).sum(dim=0))
            else:  # a mask broadcast over the batch has fewer rows than q, k, v
                for r in rows:
                    ctx.sink.absorb("attention", -r)
        return (None, None, *scaled)


def _shared_heads_expanded(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kwargs: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention (``enable_gqa``) without a kernel that takes it: repeat the key/value heads.

    On CUDA only the flash kernel (fp16/bf16, no mask) takes ``enable_gqa``; otherwise torch falls back to the
    math kernel, which stores the whole (heads × tokens × tokens) score matrix of every layer for the backward
    pass (float32 at 16k tokens on SmolLM2: out of memory on an 80 GB GPU). Repeated heads let the memory-efficient
    kernel run instead. The result is the same function; the repeat's backward sums each group's gradients back.
    """
    if not kwargs.get("enable_gqa") or not gqa_needs_math_kernel(
        q.device.type, q.dtype, kwargs.get("attn_mask") is not None
    ):
        return k, v
    if k.shape[-3] == q.shape[-3] or q.shape[-3] % k.shape[-3]:
        return k, v
    groups = q.shape[-3] // k.shape[-3]
    kwargs["enable_gqa"] = False
    return k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)


def gqa_needs_math_kernel(device_type: str, dtype: torch.dtype, masked: bool) -> bool:
    """Whether torch's SDPA can only run ``enable_gqa=True`` on its math kernel here (CUDA, float32 or a mask:
    the flash kernel takes GQA but neither float32 nor a mask; the other fused kernels do not take GQA)."""
    return device_type == "cuda" and (masked or dtype not in (torch.float16, torch.bfloat16))


class _GammaRule(torch.autograd.Function):
    """Generalised γ-rule for a linear map ``y = f(x; W, b)`` (Linear, convolution), sign-aware.

    For an output ``y_j > 0`` the positive contributions are amplified: ``x⁺`` sees ``W + γW⁺`` and ``x⁻``
    sees ``W + γW⁻`` (both give positive ``x·w``); for ``y_j < 0`` the roles swap. ``R(x)`` is each input's
    share of ``R(y) = y ⊙ ĝ(y)`` in the modified contributions. What the (modified) bias and the stabiliser
    keep is reported to the sink.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, linear, gamma, sink, y):
        ctx.save_for_backward(x, weight, bias, y)
        ctx.linear, ctx.gamma, ctx.sink = linear, gamma, sink
        return y.detach()

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, bias, y = ctx.saved_tensors
        linear, gamma = ctx.linear, ctx.gamma
        w_up, w_down = weight + gamma * weight.clamp(min=0), weight + gamma * weight.clamp(max=0)
        b_up = b_down = None
        if bias is not None:
            b_up, b_down = bias + gamma * bias.clamp(min=0), bias + gamma * bias.clamp(max=0)
        with torch.enable_grad():
            x_pos = x.detach().clamp(min=0).requires_grad_(True)
            x_neg = x.detach().clamp(max=0).requires_grad_(True)
            z_pos = linear(x_pos, w_up, b_up) + linear(x_neg, w_down, None)  # for outputs y > 0
            z_neg = linear(x_pos, w_down, b_down) + linear(x_neg, w_up, None)  # for outputs y < 0
            relevance_y = y * grad_y
            zero = torch.zeros((), dtype=y.dtype, device=y.device)
            share_pos = torch.where(y > 0, relevance_y / _stabilise(z_pos.detach()), zero)
            share_neg = torch.where(y < 0, relevance_y / _stabilise(z_neg.detach()), zero)
            g_pos, g_neg = torch.autograd.grad((z_pos * share_pos + z_neg * share_neg).sum(), (x_pos, x_neg))
        grad_x = torch.where(x > 0, g_pos, g_neg)
        if ctx.sink is not None:
            ctx.sink.absorb("gamma", per_row_sum(relevance_y) - row_relevance(x, grad_x))
        return grad_x, None, None, None, None, None, None


def _stabilise(z: torch.Tensor) -> torch.Tensor:
    return z + STABILISER * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def gamma_rule(
    linear: Callable[..., torch.Tensor],
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gamma: float,
    sink: AbsorptionSink | None = None,
) -> torch.Tensor:
    """``linear(x, weight, bias)`` forward, with the generalised γ-rule backward (see ``_GammaRule``)."""
    with torch.no_grad():
        y = linear(x.detach(), weight, bias)
    if not x.requires_grad:
        return y
    return _GammaRule.apply(x, weight.detach(), None if bias is None else bias.detach(), linear, gamma, sink, y)
