"""The log's two formats: text lines, or one JSON object a line (`--log-format
json`) for journald, Loki or jq:

    {"time": "2026-12-04T15:26:00.104Z", "level": "INFO", "logger": "fusesnap",
     "message": "serving", "pid": 1234}

with "exception" holding a traceback where a line has one.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        doc = {"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname, "logger": record.name,
               "message": record.getMessage(), "pid": record.process}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Log to standard error at `level` in format `fmt` (one of FORMATS)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT))
    logging.basicConfig(level=level, handlers=[handler])


def default_format() -> str:
    value = os.environ.get("FUSESNAP_LOG_FORMAT") or "text"
    return value if value in FORMATS else "text"
