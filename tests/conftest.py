import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import BrainProcess, ThrowawayDatabase, postgres_reachable

STORES = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def _postgres_available() -> bool:
    return postgres_reachable()


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest, _postgres_available: bool) -> str:
    """Each Brain test runs on SQLite and on the machine's PostgreSQL."""
    if request.param == "postgres" and not _postgres_available:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is required in CI")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not running")
    return request.param


@pytest.fixture
def make_brain(
    tmp_path: Path, store_kind: str
) -> Iterator[Callable[..., BrainProcess]]:
    """Start Brains with extra environment; every one is stopped afterwards.

    `make_brain(share_with=other)` starts a replica on the other's database.
    """
    started: list[BrainProcess] = []
    databases: list[ThrowawayDatabase] = []

    def make(share_with: BrainProcess | None = None, **env: str) -> BrainProcess:
        workdir = tmp_path / f"brain{len(started)}"
        workdir.mkdir()
        if share_with is not None:
            url = share_with.database_url
        elif store_kind == "postgres":
            databases.append(ThrowawayDatabase())
            url = databases[-1].url
        else:
            url = ""
        brain = BrainProcess(workdir, database_url=url, **env)
        if share_with is None:
            brain.migrate()
        started.append(brain.start())
        return brain

    yield make
    for brain in started:
        brain.stop()
    for database in databases:
        database.drop()


@pytest.fixture
def brain(make_brain: Callable[..., BrainProcess]) -> BrainProcess:
    """A fresh Brain on a loopback port with its own database."""
    return make_brain()


@pytest.fixture(scope="module")
def shared_brain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainProcess]:
    """One SQLite Brain for a module whose tests leave no state the others read."""
    brain = BrainProcess(tmp_path_factory.mktemp("shared-brain"))
    brain.migrate()
    brain.start()
    yield brain
    brain.stop()
