"""Shared fixtures: a fresh migrated store per test on SQLite and PostgreSQL (`db`), an unmigrated one (`empty_db`).

Every test that takes `db` runs once per backend; the stores themselves are made in `stores`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from stores import MigratedTemplates, Store, make_store  # noqa: E402

if TYPE_CHECKING:
    from killable_runners import StartRunner


@pytest.fixture(scope="session")
def _templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MigratedTemplates]:
    templates = MigratedTemplates(tmp_path_factory.mktemp("templates"))
    yield templates
    templates.close()


@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An RPLAT_HOME for the bundled SmolLM2, one per session: converting its GGUF takes ~40 s of CPU, and the tests
    that convert it (test_bundled, first in the session) and serve it (test_vllm) need the same converted model."""
    return tmp_path_factory.mktemp("smollm2-home")


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
       _templates: MigratedTemplates) -> Iterator[Store]:
    """A fresh store migrated to head, on each backend; RPLAT_* point at it for in-process calls too."""
    for store in make_store(request.param, tmp_path, templates=_templates):
        store.set_env(monkeypatch)
        yield store


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """Like `db` but not migrated: for migration tests and the not-at-head checks."""
    for store in make_store(request.param, tmp_path, migrate=False):
        store.set_env(monkeypatch)
        yield store


@pytest.fixture
def runners(db: Store) -> Iterator[StartRunner]:
    """start(*args) starts a real `rplat runner` process (2 s leases) on `db`; all are killed at the end."""
    from killable_runners import runner_processes  # the runner's modules, only for the tests that start runners

    yield from runner_processes(db)


# The dashboard's test modules each seed one store per backend as a module-scoped `world` fixture: (the store, the
# seeded ids). These two read it.


@pytest.fixture
def ids(world: tuple[Store, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The seeded ids, with RPLAT_DATABASE_URL pointing the app at the seeded store."""
    world[0].set_env(monkeypatch)
    return world[1]


@pytest.fixture(scope="module")
def duck(world: tuple[Store, dict[str, Any]]) -> Iterator[Any]:
    """A read-only DuckDB connection to the seeded store's views."""
    from apptests import duck_of

    yield from duck_of(world[0])
