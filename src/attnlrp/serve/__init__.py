"""The explorer: ``attnlrp serve``, a local web server that explains by clicking (docs/serve.md).

Needs the ``serve`` extra (Starlette, uvicorn, Pillow): ``pip install 'attnlrp[serve]'``. :func:`create_app`
builds the app around a :class:`ServeSession` (the model, loaded once); one worker thread owns the model.
"""

from __future__ import annotations

from .app import create_app
from .limits import Limits, RequestError
from .security import allowed_hosts
from .session import ServeSession

__all__ = ["Limits", "RequestError", "ServeSession", "allowed_hosts", "create_app"]
