"""Creating and upgrading the schema with Alembic; `serve` refuses a stale one."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from brain_service.errors import WrongState

_SCRIPTS = Path(__file__).parent / "migrations"


def _config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> str:
    """Upgrade the database to the newest revision; returns that revision."""
    config = _config(engine)
    command.upgrade(config, "head")
    return current_revision(engine) or ""


def head_revision() -> str:
    return ScriptDirectory.from_config(_config_without_engine()).get_current_head()


def _config_without_engine() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def require_current(engine: Engine) -> None:
    """Raise WrongState unless the database is at the newest revision."""
    current, head = current_revision(engine), head_revision()
    if current != head:
        raise WrongState(
            f"database schema is at {current or 'nothing'}, this Brain needs {head}: "
            "run `barter-brain migrate` first"
        )
