"""Brain and Hands stay separate deployables that share only the stubs."""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_import_contracts_hold():
    """import-linter: Hands never imports the Brain or SQLAlchemy, and vice versa."""
    result = subprocess.run(
        [BIN / "lint-imports", "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 4 kept, 0 broken" in result.stdout


def _requirement_name(requirement: str) -> str:
    return (
        re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")
    )


def _closure(extra: str) -> set[str]:
    """Every distribution the barter install with `extra` pulls in, transitively."""
    dist = metadata.distribution("barter")
    wanted: list[str] = []
    for requirement in dist.requires or []:
        name = _requirement_name(requirement)
        if "extra ==" not in requirement or f'extra == "{extra}"' in requirement:
            wanted.append(name)
    seen: set[str] = set()
    while wanted:
        name = wanted.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        wanted.extend(_requirement_name(r) for r in requires if "extra ==" not in r)
    return seen


@pytest.mark.parametrize(
    ("extra", "needs", "must_not_pull"),
    [
        ("brain", "sqlalchemy", {"instagrapi"}),
        ("hands", "instagrapi", {"sqlalchemy", "alembic"}),
    ],
)
def test_each_service_installs_without_the_others_dependencies(
    extra, needs, must_not_pull
):
    """The brain extra pulls no instagrapi; the hands extra no SQLAlchemy."""
    closure = _closure(extra)
    assert needs in closure
    assert not closure & must_not_pull, closure & must_not_pull


def test_generated_stubs_match_the_protos(tmp_path):
    """Regenerating from protos/ reproduces generated/ byte for byte."""
    env_path = f"{BIN}:{__import__('os').environ.get('PATH', '')}"
    protos = sorted(
        str(p.relative_to(ROOT)) for p in (ROOT / "protos").rglob("*.proto")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"--mypy_grpc_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={"PATH": env_path},
        timeout=60,
    )
    fresh = {
        p.relative_to(tmp_path): p.read_bytes()
        for p in tmp_path.rglob("*")
        if p.is_file()
    }
    committed = {
        p.relative_to(ROOT / "generated"): p.read_bytes()
        for p in (ROOT / "generated").rglob("*_pb2*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert fresh.keys() == committed.keys(), "run `make proto` and commit generated/"
    stale = [str(name) for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"generated/ drifted from protos/ in {stale}: run `make proto`"
