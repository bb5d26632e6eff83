"""Job kinds used only by the tests, loaded by runner subprocesses through RPLAT_PLUGINS=rplat_test_plugins."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from rplat.kinds import JobKind, Params


class FailParams(Params):
    message: str = Field("boom", description="the error the handler raises")


def fail(ctx: Any) -> dict[str, Any]:
    raise RuntimeError(ctx.params.message)


KINDS = [
    JobKind("test-fail", FailParams, "rplat_test_plugins:fail", "Always raises (tests retries and cancellation)."),
]
