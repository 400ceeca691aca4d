"""The explorer's guard: which requests reach a handler at all, and the headers every answer carries.

* ``Host`` must name this server (``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT`` or ``--host`` with the
  port): a page of another site that rebinds its DNS name to 127.0.0.1 sends its own name, and is refused (403).
* every ``/api/…`` call needs the token, as ``Authorization: Bearer T`` or ``?token=T``, compared in constant
  time (401 otherwise); the page and its static files are package files and need none;
* every answer carries a strict Content-Security-Policy and friends; none carries a CORS header.

Pure ASGI middleware, so that its refusals are answered before any routing or body reading.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Any, Awaitable, Callable, Iterable, MutableMapping
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: only the page's own files; no inline script or style element, no framing. Images may also be ``data:`` and
#: ``blob:`` URLs: the image view shows the user's own dropped file, and exports are drawn on a canvas.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'; "
                           "base-uri 'none'; form-action 'self'; object-src 'none'")

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)


def allowed_hosts(port: int, host: str | None = None) -> frozenset[str]:
    """The ``Host`` values this server answers: the loopback names with ``port``, and ``host`` (``--host``) with
    it (an IPv6 address in brackets)."""
    names = {"127.0.0.1", "localhost", "[::1]"}
    if host:
        try:
            names.add(f"[{host}]" if ipaddress.ip_address(host).version == 6 else host)
        except ValueError:  # a name, not an address
            names.add(host)
    return frozenset(f"{name.lower()}:{port}" for name in names)


def bearer_token(scope: Scope) -> str | None:
    """The token a request carries: the ``Authorization: Bearer`` header, else the ``token`` query parameter."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return values[0] if values else None


def tokens_match(given: str | None, expected: str) -> bool:
    """Constant-time comparison (the time does not tell how much of a guess was right)."""
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class Guard:
    """ASGI middleware: the Host check, the token check for ``/api/``, and the security headers."""

    def __init__(self, app: ASGIApp, *, token: str, hosts: Iterable[str]) -> None:
        if not token:
            raise ValueError("the explorer needs a non-empty access token")
        self.app = app
        self.token = token
        self.hosts = frozenset(h.lower() for h in hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the explorer has none: refused before any check could be missed
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if not k.lower().startswith(b"access-control-")]
                message = {**message, "headers": headers + list(SECURITY_HEADERS)}
            await send(message)

        host = next((v.decode("latin-1").lower() for k, v in scope.get("headers", ()) if k == b"host"), None)
        if host not in self.hosts:
            await _refuse(send_with_headers, 403, f"the Host header {host!r} is not this server's; open the explorer "
                          "at the URL attnlrp serve printed (http://127.0.0.1:PORT/…)")
            return
        if scope["path"].startswith("/api/") and not tokens_match(bearer_token(scope), self.token):
            await _refuse(send_with_headers, 401, "missing or wrong access token: open the explorer with the URL "
                          "attnlrp serve printed (…/?token=…), or send the header Authorization: Bearer TOKEN")
            return
        await self.app(scope, receive, send_with_headers)


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
