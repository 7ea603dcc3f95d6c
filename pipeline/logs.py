"""Logging of every `cdrpipe` service, set up in one place (`configure_logging`) from the
environment: `CDRPIPE_LOGLEVEL`, and `CDRPIPE_LOG_JSON=1` for one JSON object per line. (The
Faust engine's worker sets up logging its own way, at the same level.)"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from pipeline.config import environment

__all__ = ["FORMAT", "JsonFormatter", "RepeatFilter", "configure_logging", "dump_tasks"]

log = logging.getLogger(__name__)

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def configure_logging() -> None:
    """The root logger at `CDRPIPE_LOGLEVEL`, to stderr, as text or JSON lines; aiokafka's
    own records at warning and above, repeats thinned (`RepeatFilter`)."""
    env = environment()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if env.log_json else logging.Formatter(FORMAT))
    handler.addFilter(RepeatFilter())
    level = getattr(logging, env.loglevel.upper(), logging.WARNING)
    logging.basicConfig(level=level, handlers=[handler])
    logging.getLogger("aiokafka").setLevel(logging.WARNING)


def dump_tasks() -> None:
    """`kill -USR1 <pid>`: log where every asyncio task of the worker is waiting."""
    for task in asyncio.all_tasks():
        frames = task.get_stack()
        where = " <- ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        log.error("task %s: %s", task.get_name(), where or "(not started)")


class RepeatFilter(logging.Filter):
    """At most one aiokafka record per logger and message template every `every` seconds:
    while the broker is away, aiokafka logs the same connection error thousands of times a
    second (13 MB in 10 s, seen in the reliability suite)."""

    def __init__(self, every: float = 10.0) -> None:
        super().__init__()
        self.every = every
        self.last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        if now - self.last.get(key, -self.every) < self.every:
            return False
        self.last[key] = now
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, for log shippers (`CDRPIPE_LOG_JSON=1`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)
