"""The explorer's Starlette application: routes, the guard (Host, token, security headers), the model's worker.

``create_app`` builds it around a :class:`~attnlrp.serve.session.ServeSession`; ``attnlrp serve`` runs it on
uvicorn, and tests drive it with ``starlette.testclient.TestClient``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

from ..extras import require
from .limits import Limits
from .session import ServeSession

#: the page and its scripts, styles and images: files of the package, served as they are
STATIC = Path(__file__).resolve().parent / "static"


def create_app(session: ServeSession, *, token: str, allowed_hosts: Iterable[str],
               export_dir: str | os.PathLike | None = None, limits: Limits = Limits()) -> Any:
    """The explorer's ASGI app (a ``Starlette``) for ``session``.

    ``token``: what every ``/api/`` call must carry; ``allowed_hosts``: the ``Host`` values answered
    (:func:`attnlrp.serve.security.allowed_hosts`); ``export_dir``: where ``/api/export`` may write (``None``:
    nowhere); ``limits``: the bounds of a request (``prompt_tokens=None`` resolves to the model's context, at
    most 2,048). ``app.state.worker`` is the model's worker thread (closed when the app shuts down).
    """
    require("starlette", "serve")
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from .api import Api, endpoint, error_response
    from .export import Exporter
    from .security import Guard
    from .worker import ModelWorker

    limits = limits.for_context(session.context)
    worker = ModelWorker(limits.queue)
    api = Api(session, worker, limits, Exporter(export_dir) if export_dir is not None else None)

    def post(path: str, handler: Any) -> Route:
        return Route(path, endpoint(handler), methods=["POST"])

    routes = [
        Route("/", endpoint(api.index), methods=["GET", "HEAD"]),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
        Route("/api/info", endpoint(api.info), methods=["GET"]),
        post("/api/tokenize", api.tokenize),
        post("/api/explain", api.explain_text),
        post("/api/generate", api.generate),
        post("/api/latents", api.latents),
        post("/api/neurons", api.neurons),
        post("/api/steer", api.steer),
        Route("/api/atlas/{layer:int}/{neuron:int}", endpoint(api.atlas), methods=["GET"]),
        post("/api/explain-image", api.explain_image),
        post("/api/export", api.export),
    ]

    async def http_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if error.status_code == 404:
            return error_response(f"no such page or API call: {request.url.path} (the API is listed in "
                                  "docs/serve.md)", 404)
        if error.status_code == 405:
            return error_response(f"{request.method} is not allowed on {request.url.path}", 405)
        return error_response(str(error.detail), error.status_code)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        worker.close(timeout=60)  # a running job is given a minute; waiting ones are cancelled

    app = Starlette(routes=routes, middleware=[Middleware(Guard, token=token, hosts=allowed_hosts)],
                    exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.worker = worker
    app.state.limits = limits
    app.state.api = api
    return app
