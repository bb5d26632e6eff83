"""The child process where a runner with devices or slots runs one job it claimed.

The runner starts `python -m rplat.runners.framework.worker` with CUDA_VISIBLE_DEVICES set to the job's devices and
writes the order on stdin: the store's URL, RPLAT_HOME, the runner's name and pid, the lease length, whether to show
progress and the claimed job. This process asks to die with the runner, then runs the job exactly as a runner does
in-process (heartbeat thread, fenced writes, cancellation, release on SIGTERM); its messages (progress lines too) go
to stdout, which the runner echoes. It exits 0 once the job's end is recorded, whatever that end was.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rplat.config import get_settings
from rplat.queue import ClaimedJob, Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.runners.training.distributed import die_with_parent
from rplat.store import get_engine


def main() -> None:
    order = json.loads(sys.stdin.read())
    die_with_parent(order["parent"])
    job = ClaimedJob(**{**order["job"], "devices": tuple(order["job"]["devices"])})
    queue = Queue(get_engine(order["url"]), retry_base_seconds=get_settings().retry_base_seconds)
    options = RunnerOptions(name=order["runner"], lease_seconds=order["lease_seconds"], gpus=list(job.devices),
                            progress=order["progress"])
    runner = Runner(queue, Path(order["home"]), options, echo=lambda m: print(m, flush=True))
    runner.run_claimed(job)


if __name__ == "__main__":
    main()
