from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import BrainProcess


@pytest.fixture
def make_brain(tmp_path: Path) -> Iterator[Callable[..., BrainProcess]]:
    """Start Brains with extra environment; every one is stopped afterwards."""
    started: list[BrainProcess] = []

    def make(**env: str) -> BrainProcess:
        workdir = tmp_path / f"brain{len(started)}"
        workdir.mkdir()
        brain = BrainProcess(workdir, **env)
        brain.migrate()
        started.append(brain.start())
        return brain

    yield make
    for brain in started:
        brain.stop()


@pytest.fixture
def brain(make_brain: Callable[..., BrainProcess]) -> BrainProcess:
    """A fresh Brain on a loopback port with its own SQLite file."""
    return make_brain()


@pytest.fixture(scope="module")
def shared_brain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainProcess]:
    """One Brain for a module whose tests leave no state the others read."""
    brain = BrainProcess(tmp_path_factory.mktemp("shared-brain"))
    brain.migrate()
    brain.start()
    yield brain
    brain.stop()
