"""The service's access log: one line per request with the method, the route it matched (its
template, e.g. ``/api/v1/cdrs``), the status and the duration.

Never the query string or the raw path: clients put API keys in ``?api_key=`` (refused, but
the line would keep them) and filters carry phone numbers, neither of which belongs in a log
that many people read and nobody purges. A path that matched no route is logged as ``-``.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LOGGER_NAME", "AccessLogMiddleware", "route_template"]

LOGGER_NAME = "pipeline.api.access"
_log = logging.getLogger(LOGGER_NAME)


def route_template(scope: Scope) -> str:
    """The matched route's path template, ``/static/{path}`` for the page's assets, else
    ``-``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    root = scope.get("app_root_path")
    if isinstance(root, str) and scope.get("root_path", "") != root:
        return f"{scope.get('root_path', '')}/{{path}}"  # a mount (the static files)
    return "-"


class AccessLogMiddleware:
    """Pure ASGI, so that it sees the status of streamed responses and their full
    duration."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app fails before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            _log.info(
                "%s %s %d %.1fms",
                scope.get("method", "-"),
                route_template(scope),
                status,
                (time.perf_counter() - start) * 1000,
            )
