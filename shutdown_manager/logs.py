"""The sidecar's loggers, and every drain event as one log line."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shutdown_manager.drain import DrainEvent

LOGGER_NAME = "shutdown_manager"


def get_logger(name: str = "") -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{name}" if name else LOGGER_NAME)


def log_event(event: DrainEvent) -> None:
    """Every drain event as one log line (the hook's own output is invisible in Kubernetes)."""
    failed = event.outcome is not None and event.outcome.exit_code != 0
    logger = get_logger("drain")
    (logger.warning if failed else logger.info)(event.message, extra={"fields": event.to_dict()})
