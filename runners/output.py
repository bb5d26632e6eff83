"""The runner's line when a job ends: its state, its last reported progress and how long it ran."""

from __future__ import annotations


def how_far(progress: tuple[int, int | None] | None, seconds: float) -> str:
    """", 40/40 in 63 s" from the job's (done, total) progress and this attempt's seconds."""
    done, total = progress or (0, None)
    if total is None:
        return f", {done} in {seconds:.0f} s" if done else f" in {seconds:.0f} s"
    return f", {done}/{total} in {seconds:.0f} s"
