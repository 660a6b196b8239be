"""One line per event, as text for people or JSON for log pipelines: every command's
`--log-format`. Structured fields ride on a record's `fields` extra."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        body.update(getattr(record, "fields", {}))
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            line += " " + " ".join(f"{k}={_compact(v)}" for k, v in fields.items())
        return line


def _compact(value: object) -> str:
    return (
        json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else str(value)
    )


def configure(logger_name: str, log_format: str = "text", level: str = "info") -> logging.Logger:
    """One handler on stderr for `logger_name` and everything below it, and for the HTTP
    server library's own logger, whose complaints about malformed requests become one line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    for name in (logger_name, HTTP_SERVER_LOGGER):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
    http = logging.getLogger(HTTP_SERVER_LOGGER)
    if not any(isinstance(f, OneLineClientErrors) for f in http.filters):
        http.addFilter(OneLineClientErrors())
    return logging.getLogger(logger_name)


HTTP_SERVER_LOGGER = "aiohttp.server"


class OneLineClientErrors(logging.Filter):
    """A malformed request is the client's mistake: one warning line that says what was
    wrong, not a traceback of the parser (anyone who can connect could fill the log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and type(error).__module__.endswith("http_exceptions"):
            lines = [line.strip() for line in str(error).splitlines()]
            what = " ".join(line for line in lines if line and set(line) != {"^"})
            record.msg, record.args = "%s: %s", (record.getMessage(), what)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
