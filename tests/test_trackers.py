"""Training metrics to MLflow (a real SQLite tracking store) and W&B (offline, read back from its run files): the
job's params, every step's metrics once at its step, the trained model's path and sha256; kill -9 resumes the run."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from rplat.errors import UserError
from rplat.models import Job, Model, TrainingMetric
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.runners.training import trackers
from rplat.store import transaction

import factories as make
from killable_runners import StartRunner, kill_then_rescue, seed_rationales
from stores import Store
from tiny_lm import tiny_and_chain_set

TEACHER = "gpt-x"
COMMON = {"problems": "train", "teacher": TEACHER, "model": "tiny", "max_steps": 4, "batch_size": 2, "grad_accum": 1,
          "checkpoint_every": 2, "lr": 0.02, "max_length": 64}


@pytest.fixture(autouse=True)
def _no_tracker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults: a tracking store and W&B directory under RPLAT_HOME, W&B offline, nothing reported unless asked."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT",
                 trackers.REPORT_TO_ENV):
        monkeypatch.delenv(name, raising=False)


def _seed(db: Store, tmp_path: Path) -> None:
    """The tiny model and a problems dataset `train` with positive and negative chains of TEACHER (train-nt trains on
    both, and its metrics include the negatives' and the others' NLL)."""
    with transaction(db.engine()) as s:
        problems = make.problems(s, tiny_and_chain_set(s, tmp_path), [
            {"external_id": str(k), "question": f"Compute {k} + 3.", "solution": f"{k} + 3 = {k + 3}."}
            for k in range(4)])
        for k, problem in enumerate(problems):
            make.chain(s, problem, TEACHER, f"{k} + 3 = {k + 3}, so \\boxed{{{k + 3}}}.", "pos", sample_idx=0)
            make.chain(s, problem, TEACHER, f"{k} + 3 = {k + 4}, so \\boxed{{{k + 4}}}.", "neg", sample_idx=1)


def _drain(db: Store) -> None:
    Runner(Queue(db.engine()), db.home, RunnerOptions(once=True, lease_seconds=30)).run()


def _job(db: Store, job_id: int) -> tuple[Job, Model, list[tuple[int, float, float, dict[str, float]]]]:
    """The job, the model it registered and its `training_metrics` rows (step, loss, lr, extra)."""
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        model = s.scalar(select(Model).where(Model.job_id == job_id))
        rows = [tuple(r) for r in s.execute(select(TrainingMetric.step, TrainingMetric.loss, TrainingMetric.lr,
                                                   TrainingMetric.extra)
                                            .where(TrainingMetric.job_id == job_id).order_by(TrainingMetric.step))]
        s.expunge_all()
        return job, model, rows


def _mlflow_runs(db: Store) -> list[Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db.home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


def _history(db: Store, run_id: str, key: str) -> tuple[list[int], list[float]]:
    """A metric's logged steps and values, in step order (a step logged twice shows twice)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db.home / 'mlflow.db'}")
    logged = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
    return [step for step, _ in logged], [value for _, value in logged]


def test_a_job_reporting_to_mlflow_logs_its_params_each_step_once_and_its_model(db: Store, tmp_path: Path) -> None:
    _seed(db, tmp_path)
    job_id, _ = Queue(db.engine()).enqueue("train-nt", {**COMMON, "report_to": "mlflow"})
    _drain(db)
    job, model, rows = _job(db, job_id)
    assert job.status == "succeeded", job.error

    [run] = _mlflow_runs(db)
    assert run.info.run_name == f"job-{job_id}-train-nt" and run.info.status == "FINISHED"
    assert job.result["tracker"] == {"report_to": "mlflow", "run_id": run.info.run_id}
    assert run.data.params["lr"] == "0.02" and run.data.params["teacher"] == TEACHER
    assert run.data.params["report_to"] == "mlflow" and run.data.params["target_modules"] == '["q_proj", "v_proj"]'
    assert run.data.tags["rplat.job_id"] == str(job_id) and run.data.tags["rplat.kind"] == "train-nt"
    assert run.data.tags["model"] == model.name and run.data.tags["model_path"] == model.path
    assert run.data.tags["model_sha256"] == model.sha256 and len(model.sha256) == 64
    assert [step for step, *_ in rows] == [0, 1, 2, 3]
    for key, values in [("loss", [loss for _, loss, _, _ in rows]), ("lr", [lr for _, _, lr, _ in rows]),
                        *[(k, [e[k] for *_, e in rows]) for k in ("nll_neg", "nll_pos", "tokens_neg")]]:
        steps, logged = _history(db, run.info.run_id, key)  # the kind's own metrics (from `extra`) too
        assert steps == [0, 1, 2, 3] and logged == pytest.approx(values), key


def test_a_job_without_report_to_reports_nowhere(db: Store, tmp_path: Path) -> None:
    _seed(db, tmp_path)
    job_id, _ = Queue(db.engine()).enqueue("train-nt", {**COMMON, "max_steps": 2})
    _drain(db)
    job, _, _ = _job(db, job_id)
    assert job.status == "succeeded" and "tracker" not in job.result
    assert not (db.home / "mlflow.db").exists() and not (db.home / "wandb").exists()


def test_a_killed_job_reporting_to_mlflow_resumes_into_the_same_run_logging_each_step_once(
        db: Store, tmp_path: Path, runners: StartRunner) -> None:
    _seed(db, tmp_path)
    steps_total = 12
    job_id, _ = Queue(db.engine()).enqueue("train-nt", {**COMMON, "report_to": "mlflow", "max_steps": steps_total,
                                                        "epochs": 8, "checkpoint_every": 3, "lr": 1e-3})
    resume_at, (result, attempts) = kill_then_rescue(db, runners, job_id, steps_total, checkpoint_at=3)
    assert attempts == 2 and result["resumed_from"] == resume_at > 0
    _, model, rows = _job(db, job_id)
    [run] = _mlflow_runs(db)
    assert result["tracker"]["run_id"] == run.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["model_sha256"] == model.sha256
    assert [step for step, *_ in rows] == list(range(steps_total))
    steps, losses = _history(db, run.info.run_id, "loss")
    assert steps == list(range(steps_total)) and losses == pytest.approx([loss for _, loss, _, _ in rows])


def test_a_continued_mlflow_run_logs_only_the_steps_after_those_it_holds(tmp_path: Path) -> None:
    """A crash between logging a checkpoint's steps and writing that checkpoint: the resumed job trains those steps
    again, and the run it continues already holds some of them."""
    from mlflow.tracking import MlflowClient

    job = trackers.TrackedJob(7, "train-sft", {"lr": 0.5}, None, tmp_path)
    rows = [{"step": step, "loss": 10.0 - step, "lr": 0.5, "extra": {"accuracy": step / 10}} for step in range(9)]
    first = trackers.open_tracker("mlflow", job)
    first.start(None)
    first.log(rows[:6])
    resumed = trackers.open_tracker("mlflow", job)
    resumed.start(first.run_id)
    resumed.log([{**row, "loss": -1.0} for row in rows[3:]])  # steps 3-5 again: left out
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for key, values in (("loss", [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, -1.0, -1.0, -1.0]),
                        ("accuracy", [step / 10 for step in range(9)])):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(first.run_id, key))
        assert [step for step, _ in logged] == list(range(9)) and [v for _, v in logged] == pytest.approx(values)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == "job-7-train-sft" and run.info.experiment_id == client.get_experiment_by_name(
        "rplat").experiment_id and run.data.params == {"lr": "0.5"}


@pytest.mark.slow
def test_under_torchrun_rank_0_alone_reports_and_the_runner_ends_the_run(
        db: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", db.env["PYTHONPATH"])  # torchrun's workers load the test plugins too
    extract_job = seed_rationales(db, tmp_path, 10)
    queue = Queue(db.engine())
    score_job, _ = queue.enqueue("score-rationales", {"extract_job": extract_job, "model": "tiny", "tau": -1e9})
    job_id, _ = queue.enqueue("train-rationalyst", {
        "score_rationales_job": score_job, "model": "tiny", "epochs": 2, "batch_size": 2, "grad_accum": 2,
        "checkpoint_every": 2, "eval_fraction": 0.2, "eval_every": 2, "lr": 1e-3, "nproc": 2, "report_to": "mlflow"},
        after=[score_job])
    _drain(db)
    job, model, rows = _job(db, job_id)
    assert job.status == "succeeded", job.error
    [run] = _mlflow_runs(db)  # one run, though two processes trained
    assert run.info.run_name == f"job-{job_id}-train-rationalyst" and run.info.status == "FINISHED"
    assert run.data.tags["model_sha256"] == model.sha256 and run.data.params["nproc"] == "2"
    steps, losses = _history(db, run.info.run_id, "loss")
    assert steps == [step for step, *_ in rows] == list(range(4)) and losses == pytest.approx([r[1] for r in rows])
    steps, evals = _history(db, run.info.run_id, "eval_loss")
    assert steps == [1, 3] and evals == pytest.approx([e["eval_loss"] for step, _, _, e in rows if step in (1, 3)])


# --- W&B offline ---------------------------------------------------------------------------------------------

# W&B's run file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks,
# each a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes; a record is one
# protobuf `Record` of wandb's own schema (wandb.proto.wandb_internal_pb2).
_BLOCK, _HEADER = 32768, 7


def _wandb_records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, record = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0:
            break
        record += data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(record)
            yield parsed
            record = b""


def _items(items: Any) -> dict[str, Any]:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def _wandb_run(home: Path, run_id: str) -> dict[str, Any]:
    """Everything the offline directories of one run id hold: name, config, history by step, summary."""
    found: dict[str, Any] = {"dirs": 0, "config": {}, "history": [], "summary": {}}
    for path in sorted(home.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")):
        found["dirs"] += 1
        for record in _wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                found["name"] = record.run.display_name
                found["config"] |= _items(record.run.config.update)
            elif kind == "history":
                found["history"].append((record.history.step.num, _items(record.history.item)))
            elif kind == "summary":
                found["summary"] |= _items(record.summary.update)
    return found


def test_a_job_reporting_to_wandb_offline_writes_its_run_under_rplat_home(
        db: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _seed(db, tmp_path)
    monkeypatch.setenv(trackers.REPORT_TO_ENV, "wandb")  # the runner's environment, for a job that does not say
    job_id, _ = Queue(db.engine()).enqueue("train-nt", COMMON)
    _drain(db)
    job, model, rows = _job(db, job_id)
    assert job.status == "succeeded", job.error
    assert job.result["tracker"]["report_to"] == "wandb"
    run = _wandb_run(db.home, job.result["tracker"]["run_id"])
    assert run["dirs"] == 1 and run["name"] == f"job-{job_id}-train-nt"
    assert run["config"]["lr"] == 0.02 and run["config"]["teacher"] == TEACHER and "report_to" not in run["config"]
    assert [step for step, _ in run["history"]] == [0, 1, 2, 3]
    for (step, items), (row_step, loss, lr, extra) in zip(run["history"], rows, strict=True):
        assert step == row_step and items["_step"] == step
        assert items["loss"] == pytest.approx(loss) and items["lr"] == pytest.approx(lr)
        assert items["nll_neg"] == pytest.approx(extra["nll_neg"])
    assert run["summary"]["model_path"] == model.path and run["summary"]["model_sha256"] == model.sha256


# --- asking for what is not there ------------------------------------------------------------------------------


def test_a_tracker_package_that_is_not_installed_is_one_sentence_naming_the_extra(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    job = trackers.TrackedJob(1, "train-nt", {}, None, tmp_path)
    for name in ("mlflow", "wandb"):
        for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")] or [name]:
            monkeypatch.setitem(sys.modules, module, None)  # what `import` finds when the package is not installed
        with pytest.raises(UserError, match=rf"install rplat\[{name}\]"):
            trackers.open_tracker(name, job)


def test_rplat_report_to_naming_no_tracker_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(trackers.REPORT_TO_ENV, "tensorboard")
    with pytest.raises(UserError, match="RPLAT_REPORT_TO='tensorboard' names no tracker"):
        trackers.report_to(None)
    assert trackers.report_to("none") is None and trackers.report_to("mlflow") == "mlflow"
