"""Support report: which checks ran per architecture, and how well the ledger balanced.

Inactive (``record`` does nothing) unless ``ATTNLRP_SUPPORT_REPORT=path.json`` is set; then
``tests/architectures/conftest.py`` registers a ``SupportReport`` as a plugin, which maps every test outcome to
an architecture and a check (``CHECKS``) and writes the JSON at session end. ``scripts/support_table.py`` turns
that JSON into the README's support table.

Tests that explain something call ``record(architecture, explanation, model)``: the report keeps, per
architecture and method, the largest ``|ledger residual| / |value|`` (Python floats, i.e. float64 arithmetic on
the ledger's sums) over every explanation recorded.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

ENV = "ATTNLRP_SUPPORT_REPORT"

#: Checks in table order; the first seven are the matrix's, the rest apply to some architectures only.
CHECK_ORDER = ["unhandled", "ledger", "own logit", "eager=sdpa", "padded batch", "reversible", "cp-lrp",
               "moe kernel", "upstream eager≠sdpa", "lxt reference", "half precision", "audit command"]
CHECK_MEANING = {
    "unhandled": "AttnLRP: no non-linear operation runs without a rule",
    "ledger": "AttnLRP: the relevance ledger balances",
    "own logit": "the explained value is the model's own logit",
    "eager=sdpa": "AttnLRP: eager and SDPA attention give the same relevance",
    "padded batch": "every row of a padded batch equals explaining that prompt alone",
    "reversible": "leaving the rule context restores bit-identical outputs",
    "cp-lrp": "CP-LRP: every CP-LRP test (rules, ledger, eager=sdpa, attention probabilities held constant)",
    "moe kernel": "transformers' default MoE experts kernel (grouped_mm, float32) is covered and balances",
    "upstream eager≠sdpa": "transformers' own eager and SDPA forwards differ (its eager ALiBi is added twice), "
                           "so eager=sdpa cannot hold; a test pins the upstream bug",
    "lxt reference": "relevance agrees with lxt 2.1, the authors' implementation",
    "half precision": "bfloat16 and float16 relevance is finite and close to float32 (Pearson ≥ 0.99)",
    "audit command": "`attnlrp audit FOLDER --json` on the saved model: nothing unhandled, ledger balanced",
}

#: (test module stem, test function) -> (architecture or None for the ``name`` parameter, checks).
#: A test parametrised with ``method="cp-lrp"`` counts for the ``cp-lrp`` check instead.
CHECKS: dict[tuple[str, str], tuple[str | None, tuple[str, ...]]] = {
    ("test_matrix", "test_every_nonlinear_operation_has_a_rule"): (None, ("unhandled",)),
    ("test_matrix", "test_ledger_balances"): (None, ("ledger",)),
    ("test_matrix", "test_explained_value_is_the_models_own_logit"): (None, ("own logit",)),
    ("test_matrix", "test_eager_and_sdpa_give_the_same_relevance"): (None, ("eager=sdpa",)),
    ("test_matrix", "test_falcon_alibi_upstream_backends_differ"): (None, ("upstream eager≠sdpa",)),
    ("test_matrix", "test_padded_batch_rows_equal_single_prompts"): (None, ("padded batch",)),
    ("test_matrix", "test_leaving_the_context_restores_bit_identical_outputs"): (None, ("reversible",)),
    ("test_matrix", "test_cp_lrp_treats_attention_probabilities_as_constants"): (None, ("cp-lrp",)),
    ("test_matrix", "test_moe_with_the_default_experts_kernel"): (None, ("moe kernel",)),
    ("test_encoder_decoder", "test_covered_balanced_and_reported_by_segment"):
        (None, ("unhandled", "ledger", "own logit")),
    ("test_encoder_decoder", "test_eager_and_sdpa_agree"): (None, ("eager=sdpa",)),
    ("test_encoder_decoder", "test_padded_batch_rows_equal_single"): (None, ("padded batch",)),
    ("test_encoder_decoder", "test_context_exit_restores_outputs"): (None, ("reversible",)),
    ("test_vision", "test_vit_covered_balanced_and_patches_sum_pixels"): ("vit", ("unhandled", "ledger", "own logit")),
    ("test_vision", "test_vit_eager_equals_sdpa_and_gamma_changes_the_map"): ("vit", ("eager=sdpa",)),
    ("test_vision", "test_png_heatmap_and_reversibility"): ("vit", ("reversible",)),
    ("test_real_models", "test_lisbon_is_most_relevant_and_ledger_balances"): ("smollm2", ("unhandled", "ledger")),
    ("test_real_models", "test_agrees_with_reference_implementation"): ("smollm2", ("lxt reference",)),
    ("test_lxt_agreement_tiny", "test_agrees_with_lxt"): (None, ("lxt reference",)),
    ("test_real_models", "test_half_precision_is_finite_and_close_to_float32"): ("smollm2", ("half precision",)),
    ("test_audit_cli", "test_audit_command_covers_every_architecture"): (None, ("audit command",)),
    ("test_real_models", "test_minilm_bert_encoder_ledger_balances"): ("minilm", ("unhandled", "ledger")),
}

REAL_MODELS = {"smollm2": ("SmolLM2-135M-Instruct", "decoder (real checkpoint)"),
               "minilm": ("all-MiniLM-L6-v2", "encoder (real checkpoint)")}

_active: "SupportReport | None" = None


def record(architecture: str, explanation, model=None) -> None:
    """Note an explanation's ledger residual for ``architecture`` (a no-op unless the report is on)."""
    if _active is not None:
        _active.add_explanation(architecture, explanation, model)


def _checks_for(item) -> tuple[str | None, tuple[str, ...]]:
    stem = Path(str(item.fspath)).stem
    entry = CHECKS.get((stem, getattr(item, "originalname", item.name)))
    if entry is None:
        return None, ()
    arch, checks = entry
    params = getattr(getattr(item, "callspec", None), "params", {})
    arch = arch or params.get("name") or params.get("arch")
    if params.get("method") == "cp-lrp":
        checks = ("cp-lrp",)
    return arch, checks


class SupportReport:
    """A pytest plugin: outcomes per (architecture, check), ledger residuals per (architecture, method)."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.items: dict[str, tuple[str, tuple[str, ...]]] = {}  # nodeid -> (architecture, checks)
        self.outcomes: dict[str, str] = {}  # nodeid -> "passed" | "failed" | "skipped"
        self.ledger: dict[str, dict[str, dict]] = {}
        self.model_class: dict[str, str] = {}
        self.counts = {"passed": 0, "failed": 0, "skipped": 0}

    # ------------------------------------------------------------------------------------------ recording
    def add_explanation(self, architecture: str, e, model=None) -> None:
        value, residual = float(e.ledger.value), float(e.ledger.residual)
        rel = abs(residual) / abs(value) if value else float("inf")
        dtype = None
        if model is not None:
            self.model_class.setdefault(architecture, type(model).__name__)
            dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        entry = self.ledger.setdefault(architecture, {}).setdefault(
            e.method, {"max_rel_residual": 0.0, "max_abs_residual": 0.0, "explanations": 0, "dtypes": []})
        entry["max_rel_residual"] = max(entry["max_rel_residual"], rel)
        entry["max_abs_residual"] = max(entry["max_abs_residual"], abs(residual))
        entry["explanations"] += 1
        if dtype and dtype not in entry["dtypes"]:
            entry["dtypes"].append(dtype)

    # ------------------------------------------------------------------------------------- pytest hooks
    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            arch, checks = _checks_for(item)
            if arch and checks:
                self.items[item.nodeid] = (arch, checks)

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or report.outcome != "passed":
            previous = self.outcomes.get(report.nodeid)
            if previous != "failed":  # a failed setup, call or teardown makes the test failed
                self.outcomes[report.nodeid] = report.outcome

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        for outcome in self.outcomes.values():
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.to_dict(session, int(exitstatus)), indent=1) + "\n")

    # ------------------------------------------------------------------------------------------- output
    def to_dict(self, session, exitstatus: int) -> dict:
        import torch
        import transformers

        from .configs import ARCHITECTURES, LATER

        known = {**ARCHITECTURES, **LATER}
        names = [n for n in known if n in self._architectures()]
        names += [n for n in REAL_MODELS if n in self._architectures()]
        names += sorted(self._architectures() - set(names))
        rows = []
        for name in names:
            checks: dict[str, dict] = {}
            for nodeid, (arch, item_checks) in self.items.items():
                if arch != name or nodeid not in self.outcomes:
                    continue
                for check in item_checks:
                    c = checks.setdefault(check, {"passed": 0, "failed": 0, "skipped": 0, "failed_tests": []})
                    outcome = self.outcomes[nodeid]
                    c[outcome] += 1
                    if outcome == "failed":
                        c["failed_tests"].append(nodeid)
            for c in checks.values():
                c["status"] = "failed" if c["failed"] else "passed" if c["passed"] else "skipped"
            if name in known:
                arch = known[name]
                label, kind, model_class = name, arch.kind, arch.model_class
            else:
                label, kind = REAL_MODELS.get(name, (name, "?"))
                model_class = self.model_class.get(name, "?")
            rows.append({
                "name": name, "label": label, "kind": kind, "model_class": model_class,
                "checks": dict(sorted(checks.items(), key=lambda kv: _order(kv[0]))),
                "ledger": self.ledger.get(name, {}),
                "special_entry": None,  # the engine finds operations at run time: no per-architecture registry
            })
        return {
            "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join(["pytest", *map(str, session.config.invocation_params.args)]),
            "exitstatus": exitstatus,
            "counts": self.counts,
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "check_order": CHECK_ORDER,
            "check_meaning": CHECK_MEANING,
            "architectures": rows,
        }

    def _architectures(self) -> set[str]:
        return {arch for nodeid, (arch, _) in self.items.items() if nodeid in self.outcomes} | set(self.ledger)


def _order(check: str) -> int:
    return CHECK_ORDER.index(check) if check in CHECK_ORDER else len(CHECK_ORDER)


def activate(config) -> None:
    """Called from conftest's ``pytest_configure``: register the report when ``$ATTNLRP_SUPPORT_REPORT`` is set."""
    global _active
    path = os.environ.get(ENV)
    if not path or config.pluginmanager.has_plugin("attnlrp-support-report"):
        return
    if hasattr(config, "workerinput"):  # pytest-xdist worker: one report per process would overwrite
        print(f"{ENV}: ignored under pytest-xdist", file=sys.stderr)
        return
    _active = SupportReport(path)
    config.pluginmanager.register(_active, "attnlrp-support-report")
