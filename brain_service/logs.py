"""structlog set-up for the Brain: console for people, JSON for machines."""

import logging
import sys

import structlog


def configure(log_format: str = "auto", level: str = "info") -> None:
    """Route structlog and stdlib logging to stderr in the chosen format."""
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    if log_format not in {"console", "json"}:
        raise ValueError(
            f"LOG_FORMAT: expected console, json or auto, got {log_format!r}"
        )
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"LOG_LEVEL: unknown level {level!r}")

    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )

    # Libraries that log through stdlib (alembic, grpc) join the same stream.
    logging.basicConfig(stream=sys.stderr, level=max(numeric, logging.WARNING))
