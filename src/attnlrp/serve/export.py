"""Exports of the explorer's view into ``--export-dir``: a JSON file of the view, or a standalone HTML page.

The server makes every name (``attnlrp-view-<n>.html`` / ``.json``, ``n`` counting up) and never overwrites a
file: a request says only *what* to export, never where, so no request can name a path on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from ..render.escape import html_text
from ..render.html import document
from .limits import RequestError

KINDS = ("html", "json")
PREFIX = "attnlrp-view-"

_VIEW_CSS = ("<style>body{font-family:system-ui,sans-serif;margin:1.5em;max-width:70em}"
             "pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:1em}</style>")


class Exporter:
    """Writes exports into one folder (created if missing), each under a fresh server-made name."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.folder.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, view: Mapping[str, Any]) -> str:
        """Write ``view`` as ``kind`` ("html" or "json"); the new file's name (inside the folder)."""
        if kind not in KINDS:
            raise RequestError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
        text = view_html(view) if kind == "html" else json.dumps(view, ensure_ascii=False, indent=1)
        n = 1 + max((_number(p.name, kind) for p in self.folder.glob(f"{PREFIX}*.{kind}")), default=0)
        while True:
            path = self.folder / f"{PREFIX}{n}.{kind}"
            try:
                # O_EXCL: a name taken meanwhile (another server on the same folder) is never overwritten
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                n += 1
                continue
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            return path.name


def _number(name: str, kind: str) -> int:
    middle = name[len(PREFIX): -len(kind) - 1]
    return int(middle) if middle.isdigit() else 0


def view_html(view: Mapping[str, Any]) -> str:
    """A standalone page (nothing loaded from elsewhere): the heatmap of ``view["explanation"]`` (an
    explain JSON) or ``view["generation"]`` (a generation JSON) when present, then the whole view as escaped
    JSON."""
    from ..explanation import Explanation
    from ..generation import GenerationExplanation

    parts = []
    try:
        if isinstance(view.get("explanation"), Mapping):
            parts.append(Explanation.from_dict(view["explanation"]).to_html(full_page=False))
        if isinstance(view.get("generation"), Mapping):
            parts.append(GenerationExplanation.from_dict(view["generation"]).to_html(full_page=False))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise RequestError(f"the view's explanation cannot be read back ({type(error).__name__}: {error}); send "
                           "the object /api/explain or /api/generate answered, unchanged") from None
    state = html_text(json.dumps(view, ensure_ascii=False, indent=1))
    body = "".join(parts) + f"<h2>View</h2><pre>{state}</pre>"
    return document(_VIEW_CSS, body, "attnlrp explorer view", True)
