"""The Host header check: requests naming a host the service is not reached as get 400.

Without it a request with ``Host: evil.example`` is answered as if it were for this service,
and anything built from that header (a redirect's Location, links) points elsewhere: the
basis of cache poisoning and DNS rebinding against a service bound to localhost.

Allowed: ``localhost``, ``127.0.0.1``, ``::1``, the address the connection came in on (the
bind address, or the interface's address when bound to all of them) and the names of
``CDRPIPE_API_ALLOWED_HOSTS``. The accepted set depends on the connection, which Starlette's
`TrustedHostMiddleware` (a fixed list) cannot express.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["DEFAULT_HOSTS", "HostCheckMiddleware", "host_name", "parse_hosts"]

DEFAULT_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

_BODY = json.dumps(
    {"error": "bad_request", "message": "the Host header names a host this service is not"}
).encode()


def parse_hosts(text: str | None) -> frozenset[str]:
    """Host names from a comma separated setting, lower case, without ports."""
    if not text:
        return frozenset()
    return frozenset(host_name(part) for part in text.split(",") if part.strip())


def host_name(value: str) -> str:
    """The host of a Host header value: no port, no IPv6 brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


class HostCheckMiddleware:
    """Pure ASGI; answers 400 (JSON, the API's error shape) before anything else runs."""

    def __init__(self, app: ASGIApp, extra_hosts: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.allowed = DEFAULT_HOSTS | extra_hosts

    def accepts(self, scope: Scope) -> bool:
        host = ""
        for name, value in scope.get("headers", ()):
            if name == b"host":
                host = host_name(value.decode("latin-1"))
                break
        if not host:
            return False
        if host in self.allowed:
            return True
        server = scope.get("server")
        return bool(server) and host == str(server[0]).lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.accepts(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_BODY)).encode()),
                    (b"x-content-type-options", b"nosniff"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BODY})
