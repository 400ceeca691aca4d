"""The names the command line needs before any work (no torch here): the methods, the default and the levels."""

from __future__ import annotations

from ..method_registry import Method, MethodSpec, get_method

RELP = Method(
    "relp", "RelP rules",
    "relevance patching's rule set (Jafari et al., 2025): attention probabilities held constant (as CP-LRP), the "
    "uniform (half) rule for gated products (as AttnLRP), norm statistics held constant, identity for activations",
    uses_rules=True, attention="constant", gates="uniform",
)
"""The rules whose modified gradient best predicts real activation patching on SmolLM2 (docs/patching.md): CP-LRP's
attention with AttnLRP's gates. Only patching offers it by name; it is an ordinary ``Method`` (``explain`` takes the
object)."""

METHODS = ("relp", "attnlrp", "cp-lrp", "gradient")
"""What ``patch`` and ``circuit`` take by name: ``gradient`` is plain attribution patching (AtP)."""

DEFAULT_METHOD = "relp"
"""The method ``patch`` and ``circuit`` use unless told otherwise (docs/patching.md has the evidence)."""


def patching_method(spec: MethodSpec) -> Method:
    """A method name of :data:`METHODS` (or any registered one), or a ``Method`` object, as a ``Method``."""
    return RELP if spec == "relp" else get_method(spec)


LEVELS = ("heads", "mlps", "neurons", "residual")
"""The levels of components that ``patch`` estimates, in report order."""

CIRCUIT_LEVELS = ("heads", "mlps", "neurons")
"""The levels a circuit can be made of (whole MLPs and their neurons exclude each other)."""
