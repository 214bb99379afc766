"""The schema comes from Alembic migrations, and they match the models."""

import subprocess

import pytest
import sqlalchemy
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from harness import BIN, ThrowawayDatabase

from brain_service.models import Base
from brain_service.schema import head_revision


@pytest.fixture
def database_url(store_kind, tmp_path):
    if store_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'schema.db'}"
        return
    database = ThrowawayDatabase()
    yield database.url
    database.drop()


def migrate(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "barter-brain", "migrate", *args],
        env={"DATABASE_URL": url, "PATH": str(BIN)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrations_build_exactly_the_models_schema(database_url):
    """After `barter-brain migrate`, autogenerate finds nothing to change."""
    assert migrate(database_url).returncode == 0

    engine = sqlalchemy.create_engine(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)
        assert context.get_current_revision() == head_revision()
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_migrating_twice_changes_nothing(database_url):
    """A second migrate on a current database is a no-op that succeeds."""
    assert migrate(database_url).returncode == 0
    second = migrate(database_url)
    assert second.returncode == 0, second.stderr


def test_serve_refuses_a_database_that_is_not_migrated(tmp_path):
    """`serve` on an empty database says to run migrate, and exits non-zero."""
    result = subprocess.run(
        [BIN / "barter-brain", "serve", "--listen", "127.0.0.1:0"],
        env={"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}", "PATH": str(BIN)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "run `barter-brain migrate` first" in result.stderr
