"""The `probe` job: a real runner records its machine (host, Python, libraries, devices, disk)."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import shutil
import socket
from typing import Any

from stores import Store


def _probe(db: Store, *params: str) -> dict[str, Any]:
    args = [a for p in params for a in ("--param", p)]
    job_id = json.loads(db.rplat("enqueue", "probe", *args, "--json", check=True).stdout)["id"]
    db.rplat("runner", "--once", "--kinds", "probe", check=True)
    job = json.loads(db.rplat("jobs", "show", str(job_id), "--json", check=True).stdout)
    assert (job["status"], job["attempts"]) == ("succeeded", 1)
    return job["result"]


def test_probe_records_the_runner_machine(db: Store) -> None:
    result = _probe(db, f"target={socket.gethostname()}", "tag=smoke")

    assert result["host"] == socket.gethostname()
    assert (result["target"], result["tag"]) == (socket.gethostname(), "smoke")
    assert result["python"] == platform.python_version()
    assert result["versions"]["torch"] == importlib.metadata.version("torch")
    assert result["versions"]["transformers"] == importlib.metadata.version("transformers")
    assert result["versions"]["rplat"] == importlib.metadata.version("rplat")
    cpu = [d for d in result["devices"] if d["type"] == "cpu"]
    assert len(cpu) == 1 and cpu[0]["threads"] >= 1
    assert isinstance(result["disk_free_bytes"], int)
    assert 0 < result["disk_free_bytes"] <= shutil.disk_usage(db.home).total


def test_probe_without_devices_lists_none(db: Store) -> None:
    result = _probe(db, "devices=false")
    assert result["devices"] == []
    assert result["host"] == socket.gethostname()
