"""The evaluation's tasks behind one protocol, so that a run loops over tasks instead of special-casing any.

A :class:`Task` says which methods apply to it, what its samples are, and how a shard of them becomes records
(:mod:`~attnlrp.evaluation.records`). The text tasks (built-in ``next-token``, ``sentiment``, ``qa``, or the
user's JSONL as ``data``) run on the language model given to the run, loaded only when a text task needs it;
``digits`` runs the committed digits ViT (:mod:`~attnlrp.evaluation.vision_task`). A new built-in task is a
class with these members and one entry in ``_FACTORIES`` (which :data:`TASK_NAMES` lists).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from . import data, runner
from .methods import METHOD_NAMES
from .vision_task import (VISION_METHODS, VISION_TASK, digits_test_set, evaluate_digits, load_digits_vit,
                          recorded_metrics)

__all__ = [
    "DigitsTask", "LanguageModel", "Settings", "TASK_NAMES", "Task", "TextTask", "applicable", "build_task",
    "check_methods",
]

Progress = Callable[[int], None]


class Task(Protocol):
    """One evaluation task (see the module docstring)."""

    @property
    def name(self) -> str:
        """The records' task name."""
        ...

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods that apply, in order: the default when none are chosen."""
        ...

    @property
    def model_name(self) -> str:
        """The model the task runs on, as the run's info names it."""
        ...

    def samples(self, limit: int | None) -> list[Any]:
        """The task's samples in their fixed order, the first ``limit`` (all for ``None``)."""
        ...

    def evaluate(self, samples: Sequence[Any], methods: Sequence[str],
                 progress: Progress | None) -> list[dict[str, Any]]:
        """Records of ``samples`` (a shard of :meth:`samples`) for ``methods``; ``progress(1)`` per sample."""
        ...

    def run_info(self) -> dict[str, Any]:
        """What the run's info should add once this task has run (e.g. the model's recorded accuracy)."""
        ...


class LanguageModel:
    """The run's language model, loaded on first use: a run of vision tasks only never loads it."""

    def __init__(self, load: Callable[[], Any]) -> None:
        self._load = load
        self._loaded: Any = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def get(self) -> Any:
        """The loaded model (``.model``, ``.tokenizer``, ``.source``)."""
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded


@dataclass(frozen=True)
class Settings:
    """What a run's options give every task: the language model and how the flipping is done."""

    language: LanguageModel
    modes: Sequence[str] = ()
    steps: int | None = None
    batch_size: int = 32
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class TextTask:
    """A text task: samples from ``source(tokenizer, limit)``, evaluated by :func:`runner.evaluate_samples`."""

    name: str
    settings: Settings
    source: Callable[[Any, int | None], list[data.TextSample]]
    methods: tuple[str, ...] = METHOD_NAMES

    @classmethod
    def builtin(cls, name: str, settings: Settings) -> "TextTask":
        return cls(name, settings, lambda tokenizer, limit: data.build_task(name, tokenizer, limit))

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, settings: Settings) -> "TextTask":
        """The user's samples (``--data``), as the task ``data``."""
        return cls("data", settings, lambda tokenizer, limit: data.load_jsonl(path, tokenizer)[:limit])

    @property
    def model_name(self) -> str:
        return self.settings.language.get().source

    def samples(self, limit: int | None) -> list[data.TextSample]:
        return self.source(self.settings.language.get().tokenizer, limit)

    def evaluate(self, samples: Sequence[data.TextSample], methods: Sequence[str],
                 progress: Progress | None) -> list[dict[str, Any]]:
        loaded, settings = self.settings.language.get(), self.settings
        return runner.evaluate_samples(
            loaded.model, loaded.tokenizer, self.name, data.resolve_targets(loaded.model, samples), methods=methods,
            modes=settings.modes, steps=settings.steps, batch_size=settings.batch_size, options=settings.options,
            progress=progress,
        )

    def run_info(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class DigitsTask:
    """Patch flipping on the digits test images with the committed digits ViT (explained class: the gold label)."""

    settings: Settings
    name: str = VISION_TASK
    methods: tuple[str, ...] = VISION_METHODS
    model_name: str = "digits ViT"

    def samples(self, limit: int | None) -> list[tuple[int, Any, Any]]:
        """``(index in the test set, pixels, label)`` per image."""
        pixels, labels = digits_test_set()
        return list(zip(range(len(labels)), pixels, labels))[:limit]

    def evaluate(self, samples: Sequence[tuple[int, Any, Any]], methods: Sequence[str],
                 progress: Progress | None) -> list[dict[str, Any]]:
        return evaluate_digits(
            load_digits_vit(), torch.stack([p for _, p, _ in samples]) if samples else torch.zeros(0),
            torch.stack([l for _, _, l in samples]) if samples else torch.zeros(0, dtype=torch.long),
            methods=methods, steps=self.settings.steps, indices=[i for i, _, _ in samples], progress=progress,
        )

    def run_info(self) -> dict[str, Any]:
        return {"digits_vit_test_accuracy": recorded_metrics().get("test_accuracy")}


_FACTORIES: dict[str, Callable[[Settings], Task]] = {
    **{name: functools.partial(TextTask.builtin, name) for name in data.TASKS},
    VISION_TASK: DigitsTask,
}
#: The built-in tasks, in the order ``all`` runs them.
TASK_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def build_task(name: str, settings: Settings) -> Task:
    """The built-in task ``name`` (one of :data:`TASK_NAMES`)."""
    return _FACTORIES[name](settings)


def check_methods(tasks: Sequence[Task], requested: Sequence[str]) -> list[str]:
    """``requested`` without repeats, each a method of at least one of ``tasks`` (else an error listing them);
    nothing requested stays nothing: each task then runs its own methods."""
    if not requested:
        return []
    offered = list(dict.fromkeys(m for task in tasks for m in task.methods))
    return runner.chosen(requested, offered, "method")


def applicable(task: Task, requested: Sequence[str]) -> list[str]:
    """The methods ``task`` runs: those of ``requested`` it has (its own when nothing is requested)."""
    return [m for m in requested or task.methods if m in task.methods]
