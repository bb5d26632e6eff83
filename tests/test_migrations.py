"""Alembic migrations on both stores: round trips, no drift, wheel installs, the at-head guard."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from rplat.models import Base

from stores import REPO, Store

ALL_TABLES = set(Base.metadata.tables)
ALEMBIC = Path(sys.executable).parent / "alembic"


def _tables(db: Store) -> set[str]:
    engine = db.engine()
    engine.dispose()  # a fresh connection sees DDL made by other processes
    return set(inspect(engine).get_table_names())


def _revision(db: Store) -> str | None:
    with db.engine().connect() as conn:
        if "alembic_version" not in inspect(conn).get_table_names():
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def test_the_head_read_from_the_revision_files_is_alembics_head() -> None:
    from alembic.script import ScriptDirectory

    from rplat.migrate import alembic_config, head_revision

    assert head_revision() == ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def test_the_revision_read_from_the_database_is_alembics_before_during_and_after_migrating(empty_db: Store) -> None:
    from alembic.runtime.migration import MigrationContext

    from rplat.migrate import current_revision, downgrade, upgrade

    engine = empty_db.engine()

    def alembics() -> str | None:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    assert current_revision(engine) is None and alembics() is None
    upgrade(engine, "3c1d0e7a9b21")
    assert current_revision(engine) == alembics() == "3c1d0e7a9b21"
    upgrade(engine)
    downgrade(engine, "base")  # the alembic_version table stays, empty
    assert current_revision(engine) is None and alembics() is None


def test_upgrade_creates_every_table_of_the_models(empty_db: Store) -> None:
    from rplat.migrate import head_revision

    out = empty_db.rplat("db", "upgrade", check=True)
    assert out.stdout.strip() == f"database at {head_revision()}"
    assert _tables(empty_db) == ALL_TABLES | {"alembic_version"}


def test_upgrade_downgrade_upgrade_round_trip(empty_db: Store) -> None:
    from rplat.migrate import head_revision

    empty_db.rplat("db", "upgrade", check=True)
    down = empty_db.rplat("db", "downgrade", "base", check=True)
    assert down.stdout.strip() == "database at base"
    assert _tables(empty_db) <= {"alembic_version"}
    assert _revision(empty_db) is None
    empty_db.rplat("db", "upgrade", check=True)
    assert _tables(empty_db) == ALL_TABLES | {"alembic_version"}
    assert _revision(empty_db) == head_revision()


def test_upgrade_at_head_changes_nothing(db: Store) -> None:
    from rplat.migrate import head_revision

    before = _tables(db)
    assert db.rplat("db", "upgrade", check=True).stdout.strip() == f"database at {head_revision()}"
    assert _tables(db) == before


def test_db_check_at_head_reports_no_drift(db: Store) -> None:
    from rplat.migrate import head_revision

    out = db.rplat("db", "check")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"database at head {head_revision()}; no drift"


def test_db_check_reports_a_schema_that_differs_from_the_models(db: Store) -> None:
    with db.engine().begin() as conn:
        conn.execute(text("ALTER TABLE experiments ADD COLUMN stray INTEGER"))
    out = db.rplat("db", "check")
    assert out.returncode == 1
    assert "differs from the models" in out.stderr and "stray" in out.stderr


def test_db_check_on_an_unmigrated_database_says_to_upgrade(empty_db: Store) -> None:
    out = empty_db.rplat("db", "check")
    assert out.returncode == 1
    assert out.stderr.strip().endswith("run `rplat db upgrade`.")


def test_alembic_check_from_the_repo_root_finds_no_new_operations(db: Store) -> None:
    proc = subprocess.run([str(ALEMBIC), "check"], cwd=REPO, env=db.env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No new upgrade operations detected" in proc.stdout + proc.stderr


def test_renaming_nat_alpha_logs_to_nat_w_neg_keeps_its_rows_both_ways(empty_db: Store) -> None:
    from rplat.migrate import downgrade, upgrade
    from rplat.models import NatWNeg
    from rplat.queue import Queue
    from rplat.store import transaction

    engine = empty_db.engine()
    upgrade(engine, "a3c8e5d1f402")
    with transaction(engine) as s:
        job = Queue.record_done(s, "train-nat", {}, {})
        s.execute(text("INSERT INTO nat_alpha_logs (id, job_id, step, layer, proj, mean_w_neg) "
                       "VALUES (7, :job, 2, 0, 'q_proj', 0.25)"), {"job": job})
    upgrade(engine)
    with transaction(engine) as s:
        s.add(NatWNeg(job_id=job, step=4, layer=0, proj="q_proj", mean_w_neg=-0.5))  # its id comes after the copied
    rows = "SELECT id, step, mean_w_neg FROM {} ORDER BY id"
    with engine.connect() as conn:
        assert conn.execute(text(rows.format("nat_w_neg"))).all() == [(7, 2, 0.25), (8, 4, -0.5)]
    downgrade(engine, "a3c8e5d1f402")
    with engine.connect() as conn:
        assert conn.execute(text(rows.format("nat_alpha_logs"))).all() == [(7, 2, 0.25), (8, 4, -0.5)]
    assert "nat_w_neg" not in _tables(empty_db)


def test_alembic_config_points_at_the_imported_migrations_package() -> None:
    import rplat.migrations
    from rplat.migrate import alembic_config

    location = alembic_config("sqlite://").get_main_option("script_location")
    assert location == str(Path(rplat.migrations.__file__).parent)
    assert (Path(location) / "env.py").is_file() and any((Path(location) / "versions").glob("*.py"))


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rplat built as a wheel and unpacked into a bare directory: what `pip install rplat` puts in site-packages."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("platform", "runners", "migrations", "dashboard"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    site = root / "site"
    (wheel,) = (root / "dist").glob("rplat-*.whl")
    zipfile.ZipFile(wheel).extractall(site)
    return site


def test_migrations_run_from_an_installed_wheel_without_the_repo(empty_db: Store, installed_wheel: Path,
                                                                 tmp_path: Path) -> None:
    from rplat.migrate import head_revision

    env = {k: v for k, v in empty_db.env.items() if k != "RPLAT_PLUGINS"}
    env["PYTHONPATH"] = str(installed_wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)

    where = run("-c", "import rplat.migrations; print(rplat.migrations.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(installed_wheel), where.stderr
    upgraded = run("-m", "rplat.cli", "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"database at {head_revision()}"
    assert _tables(empty_db) == ALL_TABLES | {"alembic_version"}
    checked = run("-m", "rplat.cli", "db", "check")
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("state", ["never migrated", "downgraded to base", "at an unknown revision"])
def test_runner_refuses_a_database_not_at_head_with_one_sentence(empty_db: Store, state: str) -> None:
    if state == "downgraded to base":
        empty_db.rplat("db", "upgrade", check=True)
        empty_db.rplat("db", "downgrade", "base", check=True)
    elif state == "at an unknown revision":
        empty_db.rplat("db", "upgrade", check=True)
        with empty_db.engine().begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedbeef'"))
    before = _tables(empty_db)

    proc = empty_db.rplat("runner", "--once")

    assert proc.returncode == 2
    message = proc.stderr.strip()
    assert "\n" not in message, message
    assert message.startswith("error: the database ")
    assert message.endswith("run `rplat db upgrade` (or `rplat init`).")
    if state == "at an unknown revision":
        assert "is at revision f00dfeedbeef" in message
    assert _tables(empty_db) == before


def test_runner_guard_holds_when_the_runner_is_started_in_process(empty_db: Store) -> None:
    from rplat.errors import UserError
    from rplat.queue import Queue
    from rplat.runners.framework.runner import Runner, RunnerOptions

    runner = Runner(Queue(empty_db.engine()), empty_db.home, RunnerOptions(once=True))
    with pytest.raises(UserError, match=r"run `rplat db upgrade`"):
        runner.run()


def test_alembic_in_the_repo_finds_the_database_through_rplat_database_url(db: Store) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RPLAT_")}
    env["RPLAT_DATABASE_URL"] = db.url
    proc = subprocess.run([str(ALEMBIC), "current"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(head)" in proc.stdout
