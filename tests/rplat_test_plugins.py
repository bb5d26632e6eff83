"""Job kinds only the tests use, loaded by runner subprocesses via RPLAT_PLUGINS."""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import Field
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, func, insert, select

from rplat import kinds
from rplat.kinds import JobKind, Params

# Output tables of the test kinds; a test creates them with `create_output_tables(engine)`. They have no
# unique key on purpose: exactly one row per job (or per item) must come from the queue's fencing and the
# handler skipping what it already wrote, so a duplicate would show up as a second row.
OUTPUT = MetaData()
echo_output = Table(
    "test_echo_output", OUTPUT,
    Column("job_id", Integer, nullable=False),
    Column("i", Integer, nullable=False),
    Column("runner", String(200), nullable=False),
)
item_output = Table(
    "test_item_output", OUTPUT,
    Column("job_id", Integer, nullable=False),
    Column("item", Integer, nullable=False),
    Column("runner", String(200), nullable=False),
    Column("attempt", Integer, nullable=False),
)
device_output = Table(
    "test_device_output", OUTPUT,
    Column("job_id", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("meeting", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
)


def create_output_tables(engine: Engine) -> None:
    OUTPUT.create_all(engine)


class FailParams(Params):
    message: str = Field("boom", description="the error the handler raises")


def fail(ctx: Any, p: FailParams) -> dict[str, Any]:
    raise RuntimeError(p.message)


class EchoParams(Params):
    i: int = Field(description="the number the job writes back")


def echo(ctx: Any, p: EchoParams) -> dict[str, Any]:
    """Write `i` once, through a fenced transaction: the conformance suite's unit of work."""
    with ctx.transaction() as session:
        written = session.scalar(select(func.count()).select_from(echo_output)
                                 .where(echo_output.c.job_id == ctx.job_id))
        if not written:
            session.execute(insert(echo_output).values(job_id=ctx.job_id, i=p.i, runner=ctx.runner))
    return {"i": p.i, "runner": ctx.runner}


class ItemsParams(Params):
    items: int = Field(gt=0, description="how many items to write, one fenced transaction each")
    pause_seconds: float = Field(0.0, ge=0, description="pause after each item")
    check: bool = Field(True, description="call ctx.check() while pausing (off: only the fence can stop the job)")


def _pause(ctx: Any, seconds: float, check: bool) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if check:
            ctx.check()
        time.sleep(min(left, 0.02))


def items(ctx: Any, p: ItemsParams) -> dict[str, Any]:
    """Write items 0..items-1 slowly, skipping those an earlier attempt already wrote (resumable)."""
    written = 0
    for item in range(p.items):
        with ctx.transaction() as session:
            done = session.scalar(select(func.count()).select_from(item_output).where(
                item_output.c.job_id == ctx.job_id, item_output.c.item == item))
            if not done:
                session.execute(insert(item_output).values(job_id=ctx.job_id, item=item, runner=ctx.runner,
                                                           attempt=ctx.attempt))
                written += 1
        ctx.progress(item + 1, p.items)
        _pause(ctx, p.pause_seconds, p.check)
    return {"runner": ctx.runner, "written": written}


class DevicesParams(Params):
    meeting: str = Field(description="jobs of one meeting wait for each other")
    peers: int = Field(1, ge=1, description="wait until this many jobs of the meeting have started")


def devices(ctx: Any, p: DevicesParams) -> dict[str, Any]:
    """Report the devices the job saw; first record that it started (with its process id), then wait until
    `peers` jobs of its meeting have started: jobs that meet ran at the same time."""
    started = time.time()
    with ctx.transaction() as session:
        session.execute(insert(device_output).values(job_id=ctx.job_id, attempt=ctx.attempt, meeting=p.meeting,
                                                     pid=os.getpid()))
    arrived = select(func.count(func.distinct(device_output.c.job_id))).where(device_output.c.meeting == p.meeting)
    while True:
        with ctx.read() as session:
            if session.scalar(arrived) >= p.peers:
                break
        ctx.check()
        time.sleep(0.05)
    return {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "devices": list(ctx.devices),
            "pid": os.getpid(), "started": started, "finished": time.time()}


KINDS = [
    JobKind("test-fail", FailParams, "rplat_test_plugins:fail", "Always raises (tests retries and cancellation)."),
    JobKind("test-echo", EchoParams, "rplat_test_plugins:echo", "Writes its param i once (queue conformance)."),
    JobKind("test-items", ItemsParams, "rplat_test_plugins:items",
            "Writes numbered items slowly and resumably (kill, fence and release tests)."),
    JobKind("test-devices", DevicesParams, "rplat_test_plugins:devices",
            "Reports its CUDA_VISIBLE_DEVICES after meeting its peers (GPU runner tests)."),
    JobKind("test-gpu-devices", DevicesParams, "rplat_test_plugins:devices",
            "test-devices needing one GPU unless enqueued with --gpus (a kind's default).", gpus=1),
]


def register() -> None:
    """Register these kinds in this process, whatever RPLAT_PLUGINS was when its registry first loaded."""
    for kind in KINDS:
        kinds.register(kind)
