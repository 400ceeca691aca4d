"""The evaluation's optional dependencies (the ``eval`` extra): captum, scikit-learn, matplotlib and scipy are
imported where they are used, so the evaluation imports without them and a missing one names the extra to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attnlrp.errors import MissingExtraError
from attnlrp.evaluation import Attributor, text_instance
from attnlrp.evaluation import stats
from attnlrp.evaluation import vision_task as vt
from attnlrp.evaluation.report import plot_curves

CAPTUM_METHODS = ("integrated-gradients", "smoothgrad", "occlusion", "kernel-shap")
TEXT = "the capital of france is paris and the capital of"


def _without(monkeypatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)  # what an uninstalled package looks like to import


def test_the_evaluation_imports_without_captum_scikit_learn_matplotlib_and_scipy():
    blocked = ("captum", "sklearn", "matplotlib", "scipy")
    code = (
        f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
        "import attnlrp.evaluation, attnlrp.evaluation.tasks, attnlrp.evaluation.report\n"
        "print(attnlrp.evaluation.METHOD_NAMES)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "integrated-gradients" in completed.stdout


@pytest.mark.parametrize("method", CAPTUM_METHODS)
def test_captum_methods_without_captum_name_the_eval_extra(llama64, tok, monkeypatch, method):
    _without(monkeypatch, "captum", "captum.attr")
    instance = text_instance(tok, TEXT, model=llama64)
    with pytest.raises(MissingExtraError, match=r"captum.*pip install 'attnlrp\[eval\]'"):
        Attributor(llama64, tok)(method, instance)


def test_the_other_methods_run_without_captum(llama64, tok, monkeypatch):
    _without(monkeypatch, "captum", "captum.attr")
    instance = text_instance(tok, TEXT, model=llama64)
    attributor = Attributor(llama64, tok)
    for method in ("attnlrp", "gradient", "rollout", "random"):
        assert attributor(method, instance).relevance.shape == instance.input_ids.shape


def test_digits_without_scikit_learn_name_the_eval_extra(monkeypatch):
    _without(monkeypatch, "sklearn", "sklearn.datasets")
    with pytest.raises(MissingExtraError, match=r"sklearn.*pip install 'attnlrp\[eval\]'"):
        vt.digits_test_set(2)


def test_curves_without_matplotlib_name_the_eval_extra(monkeypatch, tmp_path):
    _without(monkeypatch, "matplotlib", "matplotlib.pyplot")
    with pytest.raises(MissingExtraError, match=r"matplotlib.*pip install 'attnlrp\[eval\]'"):
        plot_curves({}, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()


def test_t_intervals_without_scipy_name_the_eval_extra(monkeypatch):
    _without(monkeypatch, "scipy", "scipy.stats")
    stats.t_quantile.cache_clear()  # a quantile computed earlier must not hide the missing scipy
    try:
        for call in (lambda: stats.t_quantile(0.975, 9), lambda: stats.mean_interval([1.0, 2.0, 4.0])):
            with pytest.raises(MissingExtraError, match=r"scipy.*pip install 'attnlrp\[eval\]'"):
                call()
    finally:
        stats.t_quantile.cache_clear()
