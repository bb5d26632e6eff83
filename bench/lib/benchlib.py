"""What several benchmarks share: a fresh migrated store per run, and the parent rows a bare baseline's documents
point at (bench/lib/ holds what is not a benchmark). A benchmark drops its own folder from the front of sys.path
(bench/queue.py would shadow the standard library's `queue`) and appends bench/lib at the end, after the standard
library, to import this module. It imports rplat only when called, so that a baseline run in a process of its own
(bench/import_documents.py measures each side's peak memory) loads none of it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextmanager
def fresh_store(backend: str, workdir: Path) -> Iterator[str]:
    """The URL of a new store migrated to head, with no connection left open (a SQLite file under `workdir`, or a
    PostgreSQL database on the server of RPLAT_TEST_DATABASE_URL); removed afterwards."""
    from rplat.migrate import upgrade
    from rplat.store import get_engine, scratch_postgres

    if backend == "sqlite":
        path = workdir / f"{uuid.uuid4().hex}.db"
        url = f"sqlite:///{path}"
        upgrade(get_engine(url))
        get_engine(url).dispose()
        try:
            yield url
        finally:
            get_engine(url).dispose()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    with scratch_postgres(os.environ.get("RPLAT_TEST_DATABASE_URL", DEFAULT_PG), "rplat_bench") as url:
        upgrade(get_engine(url))
        get_engine(url).dispose()
        yield url
        get_engine(url).dispose()


def bare_parents(url: str) -> tuple[int, int]:
    """The dataset and job rows a bare baseline's documents point at (made before its clock starts)."""
    from sqlalchemy import insert

    from rplat.models import Dataset, Job, utcnow
    from rplat.store import get_engine, transaction

    with transaction(get_engine(url)) as session:
        now = utcnow()
        job_id = session.scalar(insert(Job).values(
            kind="import-documents", status="succeeded", params={}, attempts=1, max_attempts=1, lease_token=0,
            cancel_requested=False, priority=0, created_at=now, not_before=now, progress_done=0,
        ).returning(Job.id))
        dataset_id = session.scalar(insert(Dataset).values(name="bench", kind="documents", job_id=job_id,
                                                           created_at=now).returning(Dataset.id))
    assert dataset_id is not None and job_id is not None
    return dataset_id, job_id
