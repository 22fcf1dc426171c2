"""Structured logging: one JSON object per line (or plain text for humans at a terminal)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping

from server import tracing


class JsonFormatter(logging.Formatter):
    def __init__(self, fields: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._fields = dict(fields or {})

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            **self._fields,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        # The request's trace (while tracing is on): its id finds the line's trace in the trace store,
        # and every line a request causes, in every process it crossed, carries the same id.
        ids = tracing.log_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "json", fields: Mapping[str, str] | None = None) -> None:
    """`fields`: the same on every line of this process (the processes of a worker group say which
    they are: {"process": "worker-3"}), so their lines can be told apart on the one stderr they share."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(fields))
    else:
        tag = "".join(f"[{value}] " for value in (fields or {}).values())
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
