"""Logging filters for the studio's one LOGGING setting."""

from __future__ import annotations

import logging


class ForbiddenOnOneLine(logging.Filter):
    """A 403 (a user asking for what their role may not do) is logged as its one line, without
    the traceback Django attaches: it is an answer, not a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", None) == 403:
            record.exc_info = None
            record.exc_text = None
        return True
