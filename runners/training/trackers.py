"""Training metrics to MLflow or Weights & Biases: optional, off unless a job's `report_to` or RPLAT_REPORT_TO asks.

Rank 0 of the training loop opens the job's run (named `job-<id>-<kind>`, with the job's params) when it first
writes metrics, and from then on logs the same rows as `training_metrics`, each at its step, when it writes them
(with every checkpoint, just before it is written). The run's id goes into the checkpoint, so a resumed job
continues the same run from the checkpoint's step; an MLflow run is asked for its last step, so that the steps a
job logged but did not checkpoint before it was killed are not logged twice (W&B offline cannot be asked). When
the job succeeds the runner logs the models it registered (name, path, sha256) and ends the run. mlflow and wandb
are extras (`rplat[mlflow]`, `rplat[wandb]`), imported only by a job that reports to them.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select

from rplat.errors import UserError
from rplat.models import Experiment, Model
from rplat.paths import under
from rplat.runners.framework.context import JobContext, StepMetric

REPORT_TO_ENV = "RPLAT_REPORT_TO"
TRACKERS = ("mlflow", "wandb")
MLFLOW_STORE = "mlflow.db"  # the default tracking store, under RPLAT_HOME


@dataclass(frozen=True)
class TrackedJob:
    """What a run is made from: the job (its id, kind and params), its experiment and RPLAT_HOME."""

    job_id: int
    kind: str
    params: Mapping[str, Any]
    experiment: str | None
    home: Path

    @property
    def run_name(self) -> str:
        return f"job-{self.job_id}-{self.kind}"


class Tracker(Protocol):
    """One job's run in a tracker."""

    run_id: str | None

    def start(self, run_id: str | None) -> None:
        """Open a new run (logging the job's params), or continue the run `run_id`."""

    def log(self, rows: Sequence[StepMetric]) -> None:
        """Log steps' metrics at their step numbers, leaving out steps the run already holds."""

    def finish(self, outputs: Mapping[str, str]) -> None:
        """Record what the job made and end the run."""


def report_to(param: str | None) -> str | None:
    """The tracker a job reports to: its `report_to` param, else RPLAT_REPORT_TO; None for none."""
    value = param if param is not None else (os.environ.get(REPORT_TO_ENV) or "none")
    if value == "none":
        return None
    if value not in TRACKERS:
        raise UserError(f"{REPORT_TO_ENV}={value!r} names no tracker; set it to mlflow, wandb or none.")
    return value


def tracked_job(host: object) -> TrackedJob:
    """The job a training host trains for: a `JobContext`, or a host that wraps one as `.ctx`."""
    ctx = host if isinstance(host, JobContext) else getattr(host, "ctx", None)
    if not isinstance(ctx, JobContext):
        raise UserError("report_to needs a training job to name its run after; run the training as a job.")
    experiment = None
    if ctx.job.experiment_id is not None:
        with ctx.read() as s:
            experiment = s.scalar(select(Experiment.name).where(Experiment.id == ctx.job.experiment_id))
    return TrackedJob(ctx.job_id, ctx.job.kind, ctx.job.params, experiment, ctx.home)


def open_tracker(name: str, job: TrackedJob) -> Tracker:
    """The tracker `name` for `job`; its package is imported here, so a missing one fails before training."""
    return MlflowTracker(job) if name == "mlflow" else WandbTracker(job)


class LoopRun:
    """The training loop's run, on rank 0: opened (or continued from the checkpoint's `state()`) when the loop
    first writes metrics; `state()` goes into every checkpoint and the loop's summary."""

    def __init__(self, host: object, param: str | None) -> None:
        self.report_to = report_to(param)
        self.tracker = open_tracker(self.report_to, tracked_job(host)) if self.report_to else None

    def resume(self, saved: Mapping[str, str] | None) -> None:
        """Continue the run a checkpoint names (one of another tracker, or none: a new run from the next log)."""
        if self.tracker is not None and saved is not None and saved["report_to"] == self.report_to:
            self.tracker.start(saved["run_id"])

    def log(self, rows: Sequence[StepMetric]) -> None:
        if self.tracker is None or not rows:
            return
        if self.tracker.run_id is None:
            self.tracker.start(None)
        self.tracker.log(rows)

    def state(self) -> dict[str, str] | None:
        if self.tracker is None or self.tracker.run_id is None:
            return None
        return {"report_to": str(self.report_to), "run_id": self.tracker.run_id}


def finish_job(ctx: JobContext, result: object) -> None:
    """After a training job succeeded: log the models it registered to its run (the loop put the run in the
    result as `tracker`) and end the run."""
    run = result.get("tracker") if isinstance(result, dict) else None
    if not run:
        return
    with ctx.read() as s:
        models = s.execute(select(Model.name, Model.path, Model.sha256).where(Model.job_id == ctx.job_id)
                           .order_by(Model.id)).all()
    outputs: dict[str, str] = {}
    for k, m in enumerate(models):
        suffix = f"_{k}" if k else ""
        outputs |= {f"model{suffix}": m.name, f"model_path{suffix}": m.path or "",
                    f"model_sha256{suffix}": m.sha256 or ""}
    tracker = open_tracker(run["report_to"], tracked_job(ctx))
    tracker.start(run["run_id"])
    tracker.finish(outputs)


def _missing(package: str) -> UserError:
    return UserError(f"report_to={package} needs the {package} package, which is not installed; install "
                     f"rplat[{package}] (pip install 'rplat[{package}]') or report to none.")


def _param_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _step_values(row: StepMetric) -> dict[str, float]:
    return {"loss": row["loss"], "lr": row["lr"], **(row["extra"] or {})}


# --- MLflow ----------------------------------------------------------------------------------------------------

_MLFLOW_KEY = re.compile(r"[^\w.\- /:]")


class MlflowTracker:
    """MLflow through its client: the tracking URI of MLFLOW_TRACKING_URI, else a SQLite store
    `RPLAT_HOME/mlflow.db`; the experiment of MLFLOW_EXPERIMENT_NAME, else the job's experiment, else `rplat`."""

    def __init__(self, job: TrackedJob) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow") from None
        self.job = job
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{under(job.home, MLFLOW_STORE)}"
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None
        self.last_step = -1

    def _experiment_id(self) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or self.job.experiment or "rplat"
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another job created it in between
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start(self, run_id: str | None) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        if run_id is not None:
            try:
                self.client.get_run(run_id)
            except MlflowException:
                raise UserError(f"job {self.job.job_id}'s MLflow run {run_id} is not in the tracking store {self.uri}; "
                                "point MLFLOW_TRACKING_URI at the store the job started in.") from None
            self.run_id = run_id
            self.last_step = max((m.step for m in self.client.get_metric_history(run_id, "loss")), default=-1)
            return
        tags = {"rplat.job_id": str(self.job.job_id), "rplat.kind": self.job.kind}
        run = self.client.create_run(self._experiment_id(), run_name=self.job.run_name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(key, _param_value(value)[:MAX_PARAM_VAL_LENGTH])  # a longer value MLflow refuses
                  for key, value in sorted(self.job.params.items())]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log(self, rows: Sequence[StepMetric]) -> None:
        from mlflow.entities import Metric

        assert self.run_id is not None
        now = int(time.time() * 1000)
        metrics = [Metric(_MLFLOW_KEY.sub("_", key), value, now, row["step"])
                   for row in rows if row["step"] > self.last_step for key, value in _step_values(row).items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])
        self.last_step = max([self.last_step, *(row["step"] for row in rows)])

    def finish(self, outputs: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        assert self.run_id is not None
        self.client.log_batch(self.run_id, tags=[RunTag(key, value) for key, value in outputs.items()])
        self.client.set_terminated(self.run_id, "FINISHED")


# --- Weights & Biases ------------------------------------------------------------------------------------------


class WandbTracker:
    """W&B offline (WANDB_MODE, when set, wins): runs under RPLAT_HOME/wandb (WANDB_DIR/wandb when set), project
    WANDB_PROJECT else `rplat`, grouped by the job's experiment. Each process that opens the run writes its own
    offline directory of the same run id; `wandb sync` uploads them as one run."""

    def __init__(self, job: TrackedJob) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb") from None
        self.wandb = wandb
        self.job = job
        self.run_id: str | None = None
        self.run: Any = None
        self.last_step = -1

    def start(self, run_id: str | None) -> None:
        wandb = self.wandb
        live = wandb.run
        if run_id is not None and live is not None and live.id == run_id:  # this process opened it: go on with it
            self.run, self.run_id = live, run_id
            return
        directory = Path(os.environ["WANDB_DIR"]) if os.environ.get("WANDB_DIR") else self.job.home
        directory.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_machine_info=True,
                                  disable_git=True, save_code=False)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "rplat", name=self.job.run_name,
            id=run_id or secrets.token_hex(6), resume="allow", dir=str(directory),
            mode=os.environ.get("WANDB_MODE") or "offline", group=self.job.experiment, job_type=self.job.kind,
            config=None if run_id else {k: v for k, v in self.job.params.items()}, settings=settings)
        self.run_id = self.run.id

    def log(self, rows: Sequence[StepMetric]) -> None:
        for row in rows:
            if row["step"] > self.last_step:
                self.run.log(_step_values(row), step=row["step"])
                self.last_step = row["step"]

    def finish(self, outputs: Mapping[str, str]) -> None:
        self.run.summary.update(dict(outputs))
        self.run.finish()
