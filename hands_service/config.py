"""Hands' settings, each declared once with its default and variable.

A setting's value comes from, in rising precedence: its default, the
environment, and a command-line flag.
"""

import argparse
import os
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

EXECUTORS = ("dry-run", "instagram")
LOG_FORMATS = ("auto", "console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


class HandsError(Exception):
    """Root of every error the Hands worker raises on purpose."""


class ConfigError(HandsError):
    """A setting has a value that cannot be used; the message names it."""


def setting(env: str, default: Any, help: str, secret: bool = False) -> Any:
    """A dataclass field read from `env`, documented by `help`."""
    return field(default=default, metadata={"env": env, "help": help, "secret": secret})


@dataclass(frozen=True)
class HandsConfig:
    brain_url: str = setting(
        "BRAIN_URL",
        "127.0.0.1:50051",
        "Brain's host:port; several replicas as a comma list of IP:port, or one "
        "DNS name that resolves to them all (calls are spread and fail over)",
    )
    api_key: str = setting(
        "HANDS_API_KEY", "", "worker bearer key sent to Brain", secret=True
    )
    api_key_file: str = setting(
        "HANDS_API_KEY_FILE", "", "file holding HANDS_API_KEY (preferred: not in ps)"
    )
    tls_ca_file: str = setting(
        "HANDS_TLS_CA_FILE", "", "PEM CA that signed Brain's certificate; enables TLS"
    )
    tls_cert_file: str = setting(
        "HANDS_TLS_CERT_FILE", "", "PEM client certificate, for mutual TLS"
    )
    tls_key_file: str = setting(
        "HANDS_TLS_KEY_FILE", "", "PEM client private key, for mutual TLS"
    )
    allow_insecure: bool = setting(
        "HANDS_ALLOW_INSECURE",
        False,
        "talk plaintext to a non-loopback Brain (sessions cross the wire!)",
    )
    concurrency: int = setting("HANDS_CONCURRENCY", 1, "jobs this process runs at once")
    poll_interval_s: float = setting(
        "POLL_INTERVAL",
        0.0,
        "0 = long-poll; >0 = claim without waiting, then sleep this many seconds"
        " after an empty claim",
    )
    claim_wait_s: float = setting(
        "HANDS_CLAIM_WAIT_S", 30.0, "how long one long-poll claim may be held"
    )
    executor: str = setting(
        "HANDS_EXECUTOR", "dry-run", "what performs steps: dry-run or instagram"
    )
    dry_run_delay_s: float = setting(
        "HANDS_DRY_RUN_DELAY_S",
        0.2,
        "seconds each dry-run step takes (the rules file's delay_s wins)",
    )
    dry_run_rules: str = setting(
        "HANDS_DRY_RUN_RULES", "", "JSON file of dry-run outcomes per account/target"
    )
    dry_run_ledger: str = setting(
        "HANDS_DRY_RUN_LEDGER", "", "file that gets one JSON line per dry-run effect"
    )
    drain_timeout_s: float = setting(
        "HANDS_DRAIN_TIMEOUT_S",
        60.0,
        "after SIGTERM, how long running jobs may finish before they are handed back",
    )
    backoff_initial_s: float = setting(
        "HANDS_BACKOFF_INITIAL_S", 0.2, "first retry delay while Brain is unreachable"
    )
    backoff_max_s: float = setting(
        "HANDS_BACKOFF_MAX_S", 15.0, "longest retry delay while Brain is unreachable"
    )
    log_format: str = setting(
        "LOG_FORMAT", "auto", "console, json, or auto (console on a TTY)"
    )
    log_level: str = setting("LOG_LEVEL", "info", "debug, info, warning or error")

    def check(self) -> "HandsConfig":
        """Return self, or raise ConfigError naming the first unusable setting."""
        problems = (
            (self.concurrency < 1, "HANDS_CONCURRENCY", "must be at least 1"),
            (self.concurrency > 64, "HANDS_CONCURRENCY", "must be at most 64"),
            (self.poll_interval_s < 0, "POLL_INTERVAL", "must not be negative"),
            (self.claim_wait_s < 0, "HANDS_CLAIM_WAIT_S", "must not be negative"),
            (self.dry_run_delay_s < 0, "HANDS_DRY_RUN_DELAY_S", "must not be negative"),
            (self.drain_timeout_s < 0, "HANDS_DRAIN_TIMEOUT_S", "must not be negative"),
            (self.backoff_initial_s <= 0, "HANDS_BACKOFF_INITIAL_S", "must be > 0"),
            (
                self.backoff_max_s < self.backoff_initial_s,
                "HANDS_BACKOFF_MAX_S",
                "must be at least HANDS_BACKOFF_INITIAL_S",
            ),
            (not self.brain_url, "BRAIN_URL", "must not be empty"),
            (
                self.executor not in EXECUTORS,
                "HANDS_EXECUTOR",
                f"must be one of {', '.join(EXECUTORS)}",
            ),
            (
                self.log_format not in LOG_FORMATS,
                "LOG_FORMAT",
                f"must be one of {', '.join(LOG_FORMATS)}",
            ),
            (
                self.log_level.lower() not in LOG_LEVELS,
                "LOG_LEVEL",
                f"must be one of {', '.join(LOG_LEVELS)}",
            ),
        )
        for failed, env, reason in problems:
            if failed:
                raise ConfigError(f"{env} {reason}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("HANDS_TLS_CERT_FILE and HANDS_TLS_KEY_FILE go together")
        return self

    def read_api_key(self) -> str:
        """The worker key, from HANDS_API_KEY_FILE when set."""
        if not self.api_key_file:
            return self.api_key
        try:
            return Path(self.api_key_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"HANDS_API_KEY_FILE cannot be read: {exc.strerror}"
            ) from None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(f: Field, raw: object, origin: str) -> object:
    kind = type(f.default)
    try:
        if kind is bool and isinstance(raw, str):
            if raw.strip().lower() not in _TRUE | _FALSE:
                raise ValueError(raw)
            return raw.strip().lower() in _TRUE
        return kind(raw)
    except (TypeError, ValueError):
        shown = "<hidden>" if f.metadata["secret"] else repr(raw)
        raise ConfigError(
            f"{f.metadata['env']} ({origin}): expected {kind.__name__}, got {shown}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One `--flag` per setting, its help naming the variable and default."""
    for f in fields(HandsConfig):
        if f.default is MISSING:
            continue
        default = "<unset>" if f.metadata["secret"] else repr(f.default)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=type(f.default).__name__.upper(),
            help=f"{f.metadata['help']} [env {f.metadata['env']}, default {default}]",
        )


def load_config(
    environ: Mapping[str, str] | None = None,
    flags: argparse.Namespace | Mapping[str, object] | None = None,
) -> HandsConfig:
    """Build the config from defaults, the environment and flags, then check it."""
    environ = os.environ if environ is None else environ
    if isinstance(flags, argparse.Namespace):
        flags = vars(flags)
    flags = flags or {}
    values: dict[str, object] = {}
    for f in fields(HandsConfig):
        raw = environ.get(f.metadata["env"])
        if raw is not None and raw != "":
            values[f.name] = _coerce(f, raw, "environment")
        flag_value = flags.get(f.name)
        if flag_value is not None:
            values[f.name] = _coerce(f, flag_value, "flag")
    return replace(HandsConfig(), **values).check()
