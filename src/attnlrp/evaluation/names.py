"""The names of the built-in evaluation tasks, in the order ``--task all`` runs them: defined here, where nothing
imports torch, so that ``attnlrp evaluate --help`` lists them at once. :mod:`~attnlrp.evaluation.data` (the
text tasks) and :mod:`~attnlrp.evaluation.vision_task` (digits) take their names from here."""

from __future__ import annotations

#: the text tasks, on the language model given to the run
TEXT_TASKS: tuple[str, ...] = ("next-token", "sentiment", "qa")
#: the image task, on the committed digits ViT
VISION_TASK = "digits"
#: every built-in task (``attnlrp.evaluation.tasks.TASK_NAMES`` is the same tuple, built from its task classes)
TASK_NAMES: tuple[str, ...] = (*TEXT_TASKS, VISION_TASK)
