"""Pipelines: a method's DAG of jobs enqueued in one transaction, each after the jobs it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rplat import kinds
from rplat.errors import UserError
from rplat.methods.guided import GUIDED, SOLVE_METHODS
from rplat.queue import Queue
from rplat.runners.tdg.kinds import TRAINING
from rplat.store import transaction


@dataclass
class RationalystPipeline:
    """prefilter -> extract -> score -> train -> solve x methods -> evaluate (baselines need not wait for training)."""

    documents: str
    benchmark: str
    model: str
    test: str | None = None
    experiment: str | None = None
    methods: tuple[str, ...] = SOLVE_METHODS
    limit: int | None = None
    extract_limit: int | None = None
    extract_mode: str = "rewrite"
    train_steps: int | None = None
    asc_samples: int = 16
    asc_temperature: float = 0.7
    asc_setting: str = "nce"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def adapter_name(self) -> str:
        return f"{self.experiment or 'pipeline'}-rationalyst"

    def enqueue(self, queue: Queue) -> dict[str, Any]:
        """Enqueue every job (identical re-runs de-duplicate to the same jobs); returns their ids by stage."""
        def params(kind: str, values: dict[str, Any]) -> dict[str, Any]:
            merged = {k: v for k, v in {**values, **self.overrides.get(kind, {})}.items() if v is not None}
            return kinds.validate_params(kind, merged)

        ids: dict[str, Any] = {"solve": {}, "evaluate": {}}
        with transaction(queue.engine) as s:
            def add(kind: str, values: dict[str, Any], after: list[int]) -> int:
                job_id, _ = queue.enqueue_in(s, kind, params(kind, values), experiment=self.experiment, after=after)
                return job_id

            ids["prefilter"] = add("prefilter", {"documents": self.documents, "reference": [self.benchmark]}, [])
            ids["extract"] = add("extract-rationales", {
                "prefilter_job": ids["prefilter"], "problems": self.benchmark, "model": self.model,
                "mode": self.extract_mode, "limit": self.extract_limit}, [ids["prefilter"]])
            ids["score"] = add("score-rationales", {"extract_job": ids["extract"], "model": self.model},
                               [ids["extract"]])
            ids["train"] = add("train-rationalyst", {"score_job": ids["score"], "model": self.model,
                                                     "adapter_name": self.adapter_name(),
                                                     "max_steps": self.train_steps}, [ids["score"]])
            for method in self.methods:
                guided = method in GUIDED
                solve = add("solve", {
                    "problems": self.test or self.benchmark, "fewshot": self.benchmark, "model": self.model,
                    "method": method, "rationalyst": self.adapter_name() if guided else None, "limit": self.limit},
                    [ids["train"]] if guided else [])
                ids["solve"][method] = solve
                ids["evaluate"][method] = add("evaluate", {"solve_job": solve}, [solve])
        return ids


# The models a TDG experiment compares, by setting (the paper's row names): the untrained student, then one per
# row of the training table, in the paper's order.
TDG_SETTINGS = ("base", *(row.setting for row in TRAINING))
TDG_KINDS = ("collect-chains", *(row.name for row in TRAINING), "sample", "evaluate", "train-ranker",
             "score-samples", "aggregate")
# A params-file key applied to every training kind (a kind's own key wins).
TDG_TRAIN_GROUP = "train"
# A params-file key for ASC's sampled sample job only, applied over the "sample" key.
TDG_ASC_SAMPLE = "asc-sample"


@dataclass
class TdgPipeline:
    """(collect-chains) -> neg -> nat -> nce, the baselines beside them; greedy sample + evaluate per model; ASC.

    The chains are either collected from `teacher_model` (named after it) or already stored under
    `chains_teacher` (imported). Every model, the untrained student included, gets one greedy `sample` of the
    test problems after its training job and an `evaluate` after that sample. train-sft reads the gold
    solutions, not the chains, so it and the student's own sample wait for nothing. ASC (B4): a ranker trained
    on the chains scores `asc_samples` sampled chains of the `asc_setting` model per test problem, and
    `aggregate` votes over them (greedy, sc, asc-f0..f3); `asc_samples` 0 leaves ASC out.
    """

    benchmark: str
    test: str
    student: str
    teacher_model: str | None = None
    chains_teacher: str | None = None
    experiment: str | None = None
    n_chains: int = 8
    limit: int | None = None
    train_steps: int | None = None
    asc_samples: int = 16
    asc_temperature: float = 0.7
    asc_setting: str = "nce"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def adapter_name(self, setting: str) -> str:
        return f"{self.experiment or 'tdg'}-{setting}"

    def teacher(self) -> str:
        """The chain set the training kinds read: the imported one, or what collect-chains stores."""
        if self.chains_teacher is not None:
            return self.chains_teacher
        assert self.teacher_model is not None
        return self.overrides.get("collect-chains", {}).get("teacher") or self.teacher_model

    def _check(self) -> None:
        if (self.teacher_model is None) == (self.chains_teacher is None):
            raise UserError("give exactly one of --teacher MODEL (collect chains from it) and --chains NAME "
                            "(chains already imported under that teacher name).")
        keys = (*TDG_KINDS, TDG_TRAIN_GROUP, TDG_ASC_SAMPLE)
        unknown = sorted(set(self.overrides) - set(keys))
        if unknown:
            raise UserError(f"--params-file names {unknown[0]!r}, which is not a kind of this pipeline; its keys "
                            f"are: {', '.join(keys)}.")
        if self.asc_setting not in TDG_SETTINGS:
            raise UserError(f"--asc-setting {self.asc_setting!r} is not a setting of this pipeline; pick one of "
                            f"{', '.join(TDG_SETTINGS)}.")
        if self.asc_samples == 1 or self.asc_samples < 0 or (self.asc_samples and self.asc_temperature <= 0):
            raise UserError("ASC votes over several sampled chains: give --asc-samples N > 1 with "
                            "--asc-temperature > 0, or --asc-samples 0 to leave ASC out.")
        bad = next((k for k, v in self.overrides.items() if not isinstance(v, dict)), None)
        if bad is not None:
            raise UserError(f"--params-file entry {bad!r} must be an object of parameters, e.g. "
                            '{"sample": {"max_tokens": 64}}.')

    def _check_chains(self, session: Any) -> None:
        from sqlalchemy import func, select

        from rplat.models import Dataset, Problem, TeacherChain

        n = session.scalar(select(func.count()).select_from(TeacherChain)
                           .join(Problem, Problem.id == TeacherChain.problem_id)
                           .join(Dataset, Dataset.id == Problem.dataset_id)
                           .where(TeacherChain.teacher == self.chains_teacher, Dataset.name == self.benchmark))
        if not n:
            raise UserError(f"--chains {self.chains_teacher!r}: no chains of that teacher on dataset "
                            f"{self.benchmark!r}; import them with `rplat import chains FILE --teacher "
                            f"{self.chains_teacher}` or collect them with --teacher MODEL.")

    def enqueue(self, queue: Queue) -> dict[str, Any]:
        """Enqueue every job in one transaction (identical re-runs de-duplicate to the same jobs); returns their
        ids: collect (or None), and train / sample / evaluate by setting (sample and evaluate include base)."""
        self._check()

        def params(kind: str, values: dict[str, Any], key: str | None = None) -> dict[str, Any]:
            group = self.overrides.get(TDG_TRAIN_GROUP, {}) if any(kind == row.name for row in TRAINING) else {}
            own = self.overrides.get(key or kind, {})
            merged = {k: v for k, v in {**values, **group, **own}.items() if v is not None}
            return kinds.validate_params(kind, merged)

        teacher = self.teacher()
        ids: dict[str, Any] = {"collect": None, "train": {}, "sample": {}, "evaluate": {}, "asc": None}
        with transaction(queue.engine) as s:
            def add(kind: str, values: dict[str, Any], after: list[int | None], key: str | None = None) -> int:
                job_id, _ = queue.enqueue_in(s, kind, params(kind, values, key), experiment=self.experiment,
                                             after=[a for a in after if a is not None])
                return job_id

            if self.chains_teacher is not None:
                self._check_chains(s)
            else:
                ids["collect"] = add("collect-chains", {"problems": self.benchmark, "model": self.teacher_model,
                                                        "n": self.n_chains}, [])
            chains = ids["collect"]
            train = ids["train"]
            for row in TRAINING:  # in the table's order, so a model another row builds on is enqueued first
                values = {"problems": self.benchmark, "model": self.student,
                          "adapter_name": self.adapter_name(row.setting), "max_steps": self.train_steps}
                after = None
                if row.labels:  # it reads the chains
                    values["teacher"] = teacher
                    after = chains
                if row.builds_on is not None:  # it plugs in that row's model, so it waits for it (not the chains)
                    values[f"{row.builds_on}_model"] = self.adapter_name(row.builds_on)
                    after = train[row.builds_on]
                train[row.setting] = add(row.name, values, [after])
            for setting in TDG_SETTINGS:
                model = self.student if setting == "base" else self.adapter_name(setting)
                sample = add("sample", {"problems": self.test, "model": model, "n": 1, "temperature": 0.0,
                                        "limit": self.limit}, [train.get(setting)])
                ids["sample"][setting] = sample
                ids["evaluate"][setting] = add("evaluate", {"sample_job": sample}, [sample])
            if self.asc_samples:
                ids["asc"] = self._enqueue_asc(add, teacher, chains, ids)
        return ids

    def _enqueue_asc(self, add: Any, teacher: str, chains: int | None, ids: dict[str, Any]
                     ) -> dict[str, int]:
        """train-ranker on the chains; a sampled sample job of the ASC model; score-samples; aggregate."""
        ranker_name = f"{self.experiment or 'tdg'}-ranker"
        ranker = add("train-ranker", {"problems": self.benchmark, "teacher": teacher, "ranker_name": ranker_name},
                     [chains])
        setting = self.asc_setting
        model = self.student if setting == "base" else self.adapter_name(setting)
        # the "sample" key's values (max_tokens, ...) apply, but not to n and temperature, which are ASC's own
        sampled = {"problems": self.test, "model": model, "limit": self.limit, **self.overrides.get("sample", {}),
                   "n": self.asc_samples, "temperature": self.asc_temperature}
        sample = add("sample", sampled, [ids["train"].get(setting)], key=TDG_ASC_SAMPLE)
        score = add("score-samples", {"sample_job": sample, "ranker": ranker_name}, [sample, ranker])
        aggregate = add("aggregate", {"sample_job": sample, "score_job": score,
                                      "greedy_job": ids["sample"][setting]}, [score, ids["sample"][setting]])
        return {"setting": setting, "train-ranker": ranker, "sample": sample, "score-samples": score,
                "aggregate": aggregate}
