"""The framework's own kind, `probe`: parameters and handler name (importing this loads no torch)."""

from __future__ import annotations

from pydantic import Field

from rplat.kinds import JobKind, Params


class ProbeParams(Params):
    target: str | None = Field(None, description="host name the operator expects (informational; "
                               "`rplat enqueue --host H` pins a job to a machine)")
    sleep_seconds: float = Field(0.0, ge=0, description="stay busy this long (sleeping), checking for cancellation")
    burn_seconds: float = Field(0.0, ge=0, description="stay busy this long on the CPU, to measure it or test leases")
    tag: str | None = Field(None, description="free text recorded in the result, e.g. to tell probes apart")
    devices: bool = Field(True, description="list torch devices (imports torch; off for queue benchmarks)")


PROBE = JobKind("probe", ProbeParams, "rplat.runners.framework.probe:run",
                "Report a runner machine's host, devices, library versions and free disk.", runs_model=False)

KINDS = [PROBE]
