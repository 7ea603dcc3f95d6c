"""How `cdrpipe serve` runs uvicorn: timeouts for slow clients, a connection cap, and the
service's own access log instead of uvicorn's.

uvicorn times out an idle keep-alive connection (``timeout_keep_alive``) but not a client
that opens a connection and then sends its request slowly or only half of it: such a
connection stays open, and a few hundred of them hold the server's sockets and memory
(slowloris). `guarded_h11` adds the missing deadlines to uvicorn's h11 protocol: the request
line and headers must arrive within ``header_timeout`` of the connection (or of the first byte
of the next request on a kept-alive one), and a request body may not pause longer than
``body_timeout``; otherwise the connection is closed. A small subclass keeps uvicorn (already
a dependency, and what the tests run) instead of switching servers.

uvicorn's access log writes the full request target, query string included: API keys sent
as ``?api_key=`` and the phone numbers of filters would land in the log. It is turned off;
`pipeline.api.access_log` writes one line per request without query values.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import h11
from uvicorn.config import LOGGING_CONFIG
from uvicorn.protocols.http.h11_impl import H11Protocol

from pipeline.api.access_log import LOGGER_NAME
from pipeline.config import Environment, environment

__all__ = ["guarded_h11", "log_config", "uvicorn_options"]

#: Largest request line plus headers accepted (h11's default is 16 KiB too; stated here).
MAX_HEAD_BYTES = 16 * 1024


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head and body pauses."""

    header_timeout: float = 10.0
    body_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._guard: asyncio.TimerHandle | None = None
        self._guard_head = False
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch(progress=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # idle again: uvicorn's keep-alive timeout applies until the next request starts
        self._unguard()
        if self.conn.their_state is not h11.IDLE:
            self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._unguard()
        super().connection_lost(exc)

    def _watch(self, progress: bool = False) -> None:
        """Arm or drop the deadline for what the client owes now."""
        if self.transport.is_closing():
            self._unguard()
            return
        state = self.conn.their_state
        if state is h11.IDLE:  # (part of) a request head is owed
            if self.timeout_keep_alive_task is not None or (
                self._guard is not None and self._guard_head
            ):
                return  # idle keep-alive, or the head's deadline runs already (not reset)
            self._arm(self.header_timeout, head=True)
        elif state is h11.SEND_BODY:  # the body is owed: each read restarts the wait
            if progress or self._guard is None or self._guard_head:
                self._arm(self.body_timeout, head=False)
        else:
            self._unguard()

    def _arm(self, seconds: float, *, head: bool) -> None:
        self._unguard()
        self._guard_head = head
        self._guard = self.loop.call_later(seconds, self._expired)

    def _unguard(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _expired(self) -> None:
        self._guard = None
        if self.transport.is_closing():
            return
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):
            return
        what = "request headers" if self._guard_head else "request body"
        self.logger.info("closing a connection that did not send its %s in time", what)
        self.transport.close()


def guarded_h11(header_timeout: float, body_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with these deadlines (pass it as ``http=``)."""
    if header_timeout <= 0 or body_timeout <= 0:
        raise ValueError("timeouts must be above 0")
    return type(
        "GuardedH11Protocol",
        (_GuardedH11,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )


def log_config(log_level: str = "info") -> dict[str, Any]:
    """uvicorn's logging setup plus the service's access log (stdout, like uvicorn's)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["cdrpipe_access"] = {
        "formatter": "default",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
    }
    config["loggers"][LOGGER_NAME] = {
        "handlers": ["cdrpipe_access"],
        "level": log_level.upper(),
        "propagate": False,
    }
    return config


def uvicorn_options(env: Environment | None = None, log_level: str = "info") -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` from the `CDRPIPE_API_*`
    settings."""
    env = env or environment()
    return {
        "http": guarded_h11(env.api_header_timeout_s, env.api_body_timeout_s),
        "timeout_keep_alive": env.api_keep_alive_s,
        "limit_concurrency": env.api_max_connections,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "access_log": False,
        "log_config": log_config(log_level),
    }
