"""structlog set-up for Hands: console for people, JSON for machines, on stderr.

Per-job context (job_id, attempt, worker_id) is bound with structlog's
contextvars by the worker, so every line a job's tasks log carries it.
"""

import logging
import sys

import structlog

from hands_service.config import LOG_FORMATS, ConfigError


def configure(log_format: str = "auto", level: str = "info") -> None:
    """Route structlog and stdlib logging to stderr in the chosen format."""
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}")
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ConfigError(f"LOG_LEVEL: unknown level {level!r}")
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"

    # The console renderer formats tracebacks itself; JSON needs them as text.
    tail: list[structlog.typing.Processor] = (
        [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        if log_format == "console"
        else [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

    # grpc logs through stdlib; keep it on the same stream, quiet unless wrong.
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING))
