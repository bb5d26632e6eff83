"""Pipelines: a method's DAG of jobs enqueued in one transaction, each after the jobs it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rplat import kinds, references
from rplat.errors import UserError
from rplat.lookup import chain_count
from rplat.methods.guided import GUIDED, SOLVE_METHODS
from rplat.models import Model
from rplat.queue import Queue
from rplat.references import BUNDLED_MODELS
from rplat.runners.tdg.kinds import TRAINING
from rplat.store import transaction


def _current(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """A params file's values for `kind` under the current names of its params, so that an old name overrides the
    pipeline's value like the new one does (both names given: left as they are, for the validation to refuse)."""
    try:
        return kinds.current_names(kinds.get(kind).params, values)
    except ValueError:
        return values


def _check_option_model(session: Session, option: str, name: str, kind: str, field: str = "model") -> None:
    """A pipeline's model option (`--student`) is what the field it fills (`model` of `kind`) must name: the
    field's own `Ref` checks it, the sentence naming the option."""
    references.check_model(session, option, references.ref_of(kind, field), name)


def _gpus(kind: str, gpus: int) -> int | None:
    """The GPUs a pipeline's job of `kind` asks for: `gpus` if the kind runs a model, else its kind's (none)."""
    return gpus if gpus and kinds.get(kind).runs_model else None


@dataclass
class RationalystPipeline:
    """prefilter -> extract -> score -> train -> solve x methods -> evaluate (baselines need not wait for training)."""

    documents: str
    problems: str
    model: str
    test: str | None = None
    experiment: str | None = None
    methods: tuple[str, ...] = SOLVE_METHODS
    limit: int | None = None
    extract_limit: int | None = None
    extract_mode: str = "rewrite"
    train_steps: int | None = None
    gpus: int = 0
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def adapter_name(self) -> str:
        return f"{self.experiment or 'pipeline'}-rationalyst"

    def enqueue(self, queue: Queue) -> dict[str, Any]:
        """Enqueue every job (identical re-runs de-duplicate to the same jobs); returns their ids by stage."""
        def params(kind: str, values: dict[str, Any]) -> dict[str, Any]:
            merged = {k: v for k, v in {**values, **_current(kind, self.overrides.get(kind, {}))}.items()
                      if v is not None}
            return kinds.validate_params(kind, merged)

        ids: dict[str, Any] = {"solve": {}, "evaluate": {}}
        with transaction(queue.engine) as s:
            # the model is fine-tuned (train-rationalyst) as well as run, so it must be a base model
            _check_option_model(s, "--model", self.model, "train-rationalyst")

            def add(kind: str, values: dict[str, Any], after: list[int]) -> int:
                job_id, _ = queue.enqueue_in(s, kind, params(kind, values), experiment=self.experiment, after=after,
                                             gpus=_gpus(kind, self.gpus))
                return job_id

            ids["prefilter"] = add("prefilter", {"documents": self.documents, "reference": [self.problems]}, [])
            ids["extract"] = add("extract-rationales", {
                "prefilter_job": ids["prefilter"], "problems": self.problems, "model": self.model,
                "mode": self.extract_mode, "limit": self.extract_limit}, [ids["prefilter"]])
            ids["score"] = add("score-rationales", {"extract_rationales_job": ids["extract"], "model": self.model},
                               [ids["extract"]])
            ids["train"] = add("train-rationalyst", {"score_rationales_job": ids["score"], "model": self.model,
                                                     "adapter_name": self.adapter_name(),
                                                     "max_steps": self.train_steps}, [ids["score"]])
            for method in self.methods:
                guided = method in GUIDED
                solve = add("solve", {
                    "problems": self.test or self.problems, "fewshot": self.problems, "model": self.model,
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


def tdg_override_kinds(key: str) -> tuple[str, ...]:
    """The kinds whose params a TDG params-file key sets."""
    if key == TDG_TRAIN_GROUP:
        return tuple(row.name for row in TRAINING)
    return ("sample",) if key == TDG_ASC_SAMPLE else (key,)


@dataclass
class TdgPipeline:
    """(collect-chains) -> neg -> nat -> nce, the baselines beside them; greedy sample + evaluate per model; ASC.

    The chains are the `teacher`'s: when it names a model (registered, or bundled), `teacher_samples` chains per
    problem are collected from it (stored under its name); otherwise they are the chains already stored under
    that teacher name (imported). Every model, the untrained student included, gets one greedy `sample` of the
    test problems after its training job and an `evaluate` after that sample. train-sft reads the gold
    solutions, not the chains, so it and the student's own sample wait for nothing. ASC (B4): a ranker trained
    on the chains scores `asc_samples` sampled chains of the `asc_setting` model per test problem, and
    `aggregate` votes over them (greedy, sc, asc-f0..f3); `asc_samples` 0 leaves ASC out.
    """

    problems: str
    test: str
    student: str
    teacher: str
    experiment: str | None = None
    teacher_samples: int = 8
    limit: int | None = None
    train_steps: int | None = None
    asc_samples: int = 16
    asc_temperature: float = 0.7
    asc_setting: str = "nce"
    gpus: int = 0
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def adapter_name(self, setting: str) -> str:
        return f"{self.experiment or 'tdg'}-{setting}"

    def _chains_teacher(self, collects: bool) -> str:
        """The teacher name the training kinds read the chains of: what collect-chains stores them under (the
        model's name unless the params file names it), or the stored chains' own."""
        return (self.overrides.get("collect-chains", {}).get("teacher") or self.teacher) if collects else self.teacher

    def _check(self) -> None:
        keys = (*TDG_KINDS, TDG_TRAIN_GROUP, TDG_ASC_SAMPLE)
        unknown = sorted(set(self.overrides) - set(keys))
        if unknown:
            raise UserError(f"--params-file names {unknown[0]!r}, which is not a kind of this pipeline; its keys "
                            f"are: {', '.join(keys)}.")
        if self.asc_setting not in TDG_SETTINGS:
            raise UserError(f"--asc-setting {self.asc_setting!r} is not a setting of this pipeline; pick one of "
                            f"{', '.join(TDG_SETTINGS)}.")
        bad = next((k for k, v in self.overrides.items() if not isinstance(v, dict)), None)
        if bad is not None:
            raise UserError(f"--params-file entry {bad!r} must be an object of parameters, e.g. "
                            '{"sample": {"max_tokens": 64}}.')
        if self.asc_samples < 0:
            raise UserError(f"--asc-samples {self.asc_samples} is negative; give N > 1, or 0 to leave ASC out.")
        if self.asc_samples:
            # the options and the params file's keys alike, checked as aggregate checks the sample job it votes over
            sampled = self._asc_sample_values()
            temperature = sampled.get("temperature")
            try:
                checked = kinds.validate_params("sample", {k: v for k, v in sampled.items() if v is not None})
            except UserError:
                if not isinstance(temperature, int | float) or temperature > 0:
                    raise  # a mistake of another kind: the sample job's own sentence says which
                checked = {}  # a greedy temperature: said below, in ASC's words
            unmet = references.unmet(references.ref_of("aggregate", "sample_job"), checked)
            if unmet is not None or checked.get("temperature", 0) <= 0:
                raise UserError(f"ASC votes over several sampled chains, but its sample job would draw n_samples="
                                f"{sampled.get('n_samples')!r} at temperature {temperature!r} (from --asc-samples, "
                                "--asc-temperature and the params file's \"asc-sample\" key); give --asc-samples "
                                "N > 1 with --asc-temperature > 0 (in the params file: n_samples > 1 and temperature "
                                "> 0 under \"asc-sample\"), or --asc-samples 0 to leave ASC out.")

    def _asc_sample_values(self) -> dict[str, Any]:
        """The values of ASC's sampled sample job before validation: the options over the "sample" key, the
        "asc-sample" key over both."""
        setting = self.asc_setting
        model = self.student if setting == "base" else self.adapter_name(setting)
        sampled = {"problems": self.test, "model": model, "limit": self.limit,
                   **_current("sample", self.overrides.get("sample", {})),
                   "n_samples": self.asc_samples, "temperature": self.asc_temperature}
        return {**sampled, **_current("sample", self.overrides.get(TDG_ASC_SAMPLE, {}))}

    def _collects(self, session: Session) -> bool:
        """Whether the teacher is a model to collect chains from (then one collect-chains runs); if not, it must
        have chains stored on the training problems."""
        if self.teacher in BUNDLED_MODELS or session.scalar(select(Model.id).where(Model.name == self.teacher)):
            _check_option_model(session, "--teacher", self.teacher, "collect-chains")
            return True
        if not chain_count(session, self.teacher, self.problems):
            raise UserError(f"--teacher {self.teacher!r} is not a registered model and has no chains on dataset "
                            f"{self.problems!r}; import them with `rplat import chains FILE --teacher "
                            f"{self.teacher}`, or name a model to collect them from.")
        return False

    def enqueue(self, queue: Queue) -> dict[str, Any]:
        """Enqueue every job in one transaction (identical re-runs de-duplicate to the same jobs); returns their
        ids: collect (or None), and train / sample / evaluate by setting (sample and evaluate include base)."""
        self._check()

        def params(kind: str, values: dict[str, Any], key: str | None = None) -> dict[str, Any]:
            group = self.overrides.get(TDG_TRAIN_GROUP, {}) if kind in tdg_override_kinds(TDG_TRAIN_GROUP) else {}
            group, own = _current(kind, group), _current(kind, self.overrides.get(key or kind, {}))
            merged = {k: v for k, v in {**values, **group, **own}.items() if v is not None}
            return kinds.validate_params(kind, merged)

        ids: dict[str, Any] = {"collect": None, "train": {}, "sample": {}, "evaluate": {}, "asc": None}
        with transaction(queue.engine) as s:
            def add(kind: str, values: dict[str, Any], after: list[int | None], key: str | None = None) -> int:
                job_id, _ = queue.enqueue_in(s, kind, params(kind, values, key), experiment=self.experiment,
                                             after=[a for a in after if a is not None], gpus=_gpus(kind, self.gpus))
                return job_id

            _check_option_model(s, "--student", self.student, TRAINING[0].name)  # fine-tuned by every row
            collects = self._collects(s)
            teacher = self._chains_teacher(collects)
            if collects:
                ids["collect"] = add("collect-chains", {"problems": self.problems, "model": self.teacher,
                                                        "n_samples": self.teacher_samples}, [])
            chains = ids["collect"]
            train = ids["train"]
            for row in TRAINING:  # in the table's order, so a model another row builds on is enqueued first
                values = {"problems": self.problems, "model": self.student,
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
                sample = add("sample", {"problems": self.test, "model": model, "n_samples": 1, "temperature": 0.0,
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
        ranker = add("train-ranker", {"problems": self.problems, "teacher": teacher, "ranker_name": ranker_name},
                     [chains])
        setting = self.asc_setting
        sample = add("sample", self._asc_sample_values(), [ids["train"].get(setting)], key=TDG_ASC_SAMPLE)
        score = add("score-samples", {"sample_job": sample, "ranker": ranker_name}, [sample, ranker])
        aggregate = add("aggregate", {"sample_job": sample, "score_samples_job": score,
                                      "greedy_sample_job": ids["sample"][setting]}, [score, ids["sample"][setting]])
        return {"setting": setting, "train-ranker": ranker, "sample": sample, "score-samples": score,
                "aggregate": aggregate}
