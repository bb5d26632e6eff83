"""`evaluate`: parameters and handler name (importing this loads no torch)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from rplat.kinds import JobKind, Params
from rplat.references import Ref
from rplat.runners.tdg.kinds import UNANSWERED_HELP, Unanswered


class EvaluateParams(Params):
    solve_job: Annotated[int | None, Ref("job", kind="solve", primary=True)] = Field(
        None, description="the solve job whose trajectories to check")
    sample_job: Annotated[int | None, Ref("job", kind="sample", primary=True)] = Field(
        None, description="the sample job whose chains to check (greedy, or self-consistency over its samples)")
    unanswered: Unanswered | None = Field(
        None, description=UNANSWERED_HELP + "; default: the kind's protocol, vote for a sample job (TDG), drop for "
        "a solve job (RATIONALYST); the job stores the resolved value")

    @model_validator(mode="after")
    def _one_source(self) -> EvaluateParams:
        if (self.solve_job is None) == (self.sample_job is None):
            raise ValueError("name exactly one of solve_job and sample_job")
        return self

    @model_validator(mode="before")
    @classmethod
    def _kinds_protocol(cls, data: Any) -> Any:
        """No `unanswered`: the protocol of the job's kind (vote for a TDG sample job, drop for a solve job)."""
        if isinstance(data, dict) and data.get("unanswered") is None:
            data = {**data, "unanswered": "vote" if data.get("sample_job") is not None else "drop"}
        return data


EVALUATE = JobKind("evaluate", EvaluateParams, "rplat.runners.evaluation.evaluate:evaluate",
                   "Check a solve or sample job's answers (math-verify): predictions, self-consistency, "
                   "micro accuracy per subject.", runs_model=False,
                   reads_reviews=True)

KINDS = [EVALUATE]
