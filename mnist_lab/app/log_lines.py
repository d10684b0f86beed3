"""The terminal's share of a job's log (conf/hydra/job_logging/lab.yaml): progress on stdout, and
warnings and errors on stderr as plain lines, in the one format of every command's errors."""

from __future__ import annotations

import logging


class BelowLevel(logging.Filter):
    """Passes the records below `level`, so a record goes to one of the two terminal streams."""

    def __init__(self, level: str | int) -> None:
        super().__init__()
        self.level = logging.getLevelName(level) if isinstance(level, str) else level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level
