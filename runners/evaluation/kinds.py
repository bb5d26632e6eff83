"""`evaluate`: parameters and handler name (importing this loads no torch)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from rplat.kinds import JobKind, Params
from rplat.references import Ref


class EvaluateParams(Params):
    solve_job: Annotated[int | None, Ref("job", kind="solve", primary=True)] = Field(
        None, description="the solve job whose trajectories to check")
    sample_job: Annotated[int | None, Ref("job", kind="sample", primary=True)] = Field(
        None, description="the sample job whose chains to check (greedy, or self-consistency over its samples)")

    @model_validator(mode="after")
    def _one_source(self) -> EvaluateParams:
        if (self.solve_job is None) == (self.sample_job is None):
            raise ValueError("name exactly one of solve_job and sample_job")
        return self


EVALUATE = JobKind("evaluate", EvaluateParams, "rplat.runners.evaluation.evaluate:evaluate",
                   "Check a solve or sample job's answers (math-verify): predictions, self-consistency, "
                   "micro accuracy per subject.", runs_model=False)

KINDS = [EVALUATE]
