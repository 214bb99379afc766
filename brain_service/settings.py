"""Declaring settings once: each field names its environment variable and help.

A setting's value comes from, in rising precedence: its default, the optional
TOML file named by the config's file variable, the environment, and a
command-line flag.
"""

import argparse
import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, Field, field, fields, replace
from typing import Any, TypeVar

T = TypeVar("T")


class SettingError(ValueError):
    """A setting has a value that cannot be used; the message names it."""


def setting(env: str, default: Any, help: str, secret: bool = False) -> Any:
    """A dataclass field read from `env`, documented by `help`."""
    return field(default=default, metadata={"env": env, "help": help, "secret": secret})


def _coerce(f: Field, raw: object, origin: str) -> object:
    kind = type(f.default)
    try:
        if kind is bool and isinstance(raw, str):
            lowered = raw.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(raw)
            return lowered in {"1", "true", "yes", "on"}
        return kind(raw)
    except (TypeError, ValueError):
        shown = "<hidden>" if f.metadata.get("secret") else repr(raw)
        raise SettingError(
            f"{f.metadata['env']} ({origin}): expected {kind.__name__}, got {shown}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag` per field, its help naming the variable and default."""
    for f in fields(cls):
        if f.default is MISSING:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = "<unset>" if f.metadata.get("secret") else repr(f.default)
        parser.add_argument(
            flag,
            dest=f.name,
            default=None,
            metavar=type(f.default).__name__.upper(),
            help=f"{f.metadata['help']} [env {f.metadata['env']}, default {default}]",
        )


def load(
    cls: type[T],
    environ: Mapping[str, str] | None = None,
    flags: argparse.Namespace | None = None,
    file_env: str | None = None,
) -> T:
    """Build `cls` from defaults, an optional TOML file, environment and flags."""
    environ = os.environ if environ is None else environ
    config = cls()
    values: dict[str, object] = {}

    path = environ.get(file_env, "") if file_env else ""
    if path:
        try:
            with open(path, "rb") as fh:
                from_file = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingError(f"{file_env}: cannot read {path}: {exc}") from exc
        known = {f.name: f for f in fields(cls)}
        for key, raw in from_file.items():
            if key not in known:
                raise SettingError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(known[key], raw, path)

    for f in fields(cls):
        raw = environ.get(f.metadata["env"])
        if raw is not None and raw != "":
            values[f.name] = _coerce(f, raw, "environment")
        flag_value = getattr(flags, f.name, None) if flags is not None else None
        if flag_value is not None:
            values[f.name] = _coerce(f, flag_value, "flag")

    return replace(config, **values)
