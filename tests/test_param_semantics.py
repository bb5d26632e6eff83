"""What job params name must fit, checked at enqueue from the kinds' declarations (`Ref`, `Makes`, `MakesChains`,
`Need`): a model's format and role, jobs that belong together, chain sets that exist, floats that are finite; the
same checks for `--param`, `--params-file`, `--params-jsonl` and pipelines. Rows come from factories: nothing runs.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from sqlalchemy import func, select

from rplat import kinds
from rplat.bundled import SMOLLM2
from rplat.errors import UserError
from rplat.models import Job
from rplat.pipelines import RationalystPipeline, TdgPipeline
from rplat.queue import Queue
from rplat.references import CAUSAL_LM, Made, Makes, MakesChains, Ref, made, references
from rplat.registry import BUNDLED_EMBEDDER
from rplat.runners.tdg.kinds import TRAINING
from rplat.store import transaction

import factories as make
from stores import Store

TEACHER = "gpt"
# Registered models without files (enqueue never loads one): name -> (format, role).
MODELS = {"student": ("base", "agent"), "kd-lora": ("lora", "kd"), "neg-lora": ("lora", "neg"),
          "plain-lora": ("lora", None), "nat": ("nat", "nat"), "ranker": ("ranker", "ranker"),
          "embedder": ("embedding", None)}


def _seed(db: Store) -> dict[str, int]:
    """Problem datasets `train` (with chains of TEACHER) and `test`, document datasets `d1` and `d2`, the MODELS,
    and succeeded jobs: sample jobs (sampled of the student, another sampled, greedy of the student, greedy of
    kd-lora, and one stored with the old parameter name `n`), a score-samples job of each sampled one and a
    prefilter job of each document dataset; returns the jobs' ids."""
    with transaction(db.engine()) as s:
        imported = make.job(s, "import-chains")
        train = make.dataset(s, "train", imported)
        make.dataset(s, "test", make.job(s, "import-problems"))
        make.dataset(s, "d1", make.job(s, "import-documents"), kind="documents")
        make.dataset(s, "d2", make.job(s, "import-documents"), kind="documents")
        problem, = make.problems(s, train, [{"external_id": "p0", "question": "1 + 1?", "answer": "2"}])
        make.chain(s, problem, TEACHER, "1 + 1 = 2, so \\boxed{2}.", "pos")
        for name, (fmt, role) in MODELS.items():
            make.model(s, name, fmt, role=role)

        def sample(model: str, n: int, temperature: float, *, old_name: bool = False) -> int:
            params = {"problems": "test", "model": model, "n" if old_name else "n_samples": n,
                      "temperature": temperature}
            return make.job(s, "sample", params).id

        ids = {"sampled": sample("student", 4, 0.7), "other_sampled": sample("student", 4, 0.7),
               "greedy": sample("student", 1, 0.0), "greedy_kd": sample("kd-lora", 1, 0.0),
               "old_sampled": sample("student", 4, 0.7, old_name=True)}
        for key in ("sampled", "other_sampled"):
            ids[f"score_{key}"] = make.job(s, "score-samples", {"sample_job": ids[key], "ranker": "ranker"}).id
        for key in ("d1", "d2"):
            ids[f"prefilter_{key}"] = make.job(s, "prefilter", {"documents": key, "reference": ["train"]}).id
        return ids


def _jobs(db: Store) -> int:
    with transaction(db.engine()) as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def _refused(db: Store, kind: str, params: dict[str, Any], after: tuple[int, ...] = ()) -> str:
    """The sentence enqueueing refuses with; nothing is queued."""
    before = _jobs(db)
    with pytest.raises(UserError) as refused:
        Queue(db.engine()).enqueue(kind, params, after=list(after))
    assert _jobs(db) == before
    message = str(refused.value)
    assert message.endswith(".") and "\n" not in message
    return message


def _queued(db: Store, kind: str, params: dict[str, Any], after: tuple[int, ...] = ()) -> int:
    job_id, created = Queue(db.engine()).enqueue(kind, params, after=list(after))
    assert created
    return job_id


TRAIN = {"problems": "train", "teacher": TEACHER, "model": "student"}


# --- finite floats ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "params", "field"), [
    ("train-kd", {**TRAIN, "lr": "inf"}, "lr"),
    ("train-kd", {**TRAIN, "lr": math.inf}, "lr"),
    ("sample", {"problems": "test", "temperature": "inf"}, "temperature"),
    ("sample", {"problems": "test", "temperature": math.nan}, "temperature"),
    ("probe", {"sleep_seconds": -math.inf}, "sleep_seconds"),
    ("score-rationales", {"extract_rationales_job": 1, "tau_by_source": {"gsm8k": math.nan}}, "tau_by_source.gsm8k"),
    ("prefilter", {"documents": "d1", "reference": ["train"], "threshold": "nan"}, "threshold"),
], ids=["lr-text-inf", "lr-float-inf", "temperature-text-inf", "temperature-nan", "sleep-minus-inf",
        "nan-inside-a-dict", "threshold-text-nan"])
def test_a_float_that_is_not_finite_is_refused_before_the_store_is_touched(kind: str, params: dict[str, Any],
                                                                           field: str) -> None:
    with pytest.raises(UserError, match=rf"'{field}' input should be a finite number"):
        kinds.validate_params(kind, params)


def test_every_kinds_params_refuse_inf_and_nan() -> None:
    for name, kind in _built_in().items():
        assert kind.params.model_config.get("allow_inf_nan") is False, name


def test_finite_floats_and_ints_are_still_taken() -> None:
    assert kinds.validate_params("train-kd", {**TRAIN, "lr": "1e-3"})["lr"] == 1e-3
    assert kinds.validate_params("sample", {"problems": "test", "temperature": 0, "n_samples": 1})["temperature"] == 0


# --- model formats and roles ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "params", "fragments"), [
    ("train-nat", {**TRAIN, "neg_model": "embedder"},
     ["parameter 'neg_model' of train-nat names model 'embedder', an embedding model (registered: format embedding)",
      "not a LoRA adapter (format lora, role neg)", "name the result of a train-neg job", "rplat models ls"]),
    ("train-nat", {**TRAIN, "neg_model": "kd-lora"}, ["'kd-lora', a LoRA adapter (registered: format lora, role kd)",
                                                      "role neg"]),
    ("train-nat", {**TRAIN, "neg_model": BUNDLED_EMBEDDER},
     [f"'{BUNDLED_EMBEDDER}', an embedding model (bundled: format embedding"]),
    ("score-samples", {"sample_job": "{sampled}", "ranker": "kd-lora"},
     ["parameter 'ranker' of score-samples names model 'kd-lora', a LoRA adapter", "not a ranker (format ranker)",
      "train-ranker"]),
    ("score-samples", {"sample_job": "{sampled}", "ranker": "student"}, ["a causal LM", "not a ranker"]),
    ("train-kd", {**TRAIN, "model": "embedder"}, ["parameter 'model' of train-kd", "not a causal LM (format base)"]),
    ("train-kd", {**TRAIN, "model": "kd-lora"}, ["a LoRA adapter", "not a causal LM (format base)"]),
    ("train-nce", {**TRAIN, "nat_model": "neg-lora"}, ["'neg-lora', a LoRA adapter", "not a NAT model", "train-nat"]),
    ("sample", {"problems": "test", "model": BUNDLED_EMBEDDER}, ["not a causal LM or an adapter on one (format base, "
                                                                "lora or nat)"]),
    ("sample", {"problems": "test", "model": "ranker"}, ["a ranker"]),
    ("collect-chains", {"problems": "train", "model": "embedder"}, ["parameter 'model' of collect-chains"]),
    ("solve", {"problems": "test", "method": "rationalyst-explicit", "rationalyst": "embedder"},
     ["parameter 'rationalyst' of solve"]),
    ("solve", {"problems": "test", "method": "rationalyst-implicit", "rationalyst": "kd-lora", "scorer": "ranker"},
     ["parameter 'scorer' of solve"]),
    ("prefilter", {"documents": "d1", "reference": ["train"], "embed_model": SMOLLM2},
     [f"'{SMOLLM2}', a causal LM (bundled: format base, role agent)", "not an embedding model (format embedding)"]),
    ("train-ranker", {"problems": "train", "teacher": TEACHER, "encoder": "kd-lora"},
     ["not an embedding model or a causal LM (format embedding or base)"]),
    ("extract-rationales", {"problems": "train", "model": "nat", "mode": "insert"}, []),
], ids=["neg-is-an-embedding-model", "neg-is-a-kd-lora", "neg-is-the-bundled-embedder", "ranker-is-a-lora",
        "ranker-is-a-base-model", "student-is-an-embedding-model", "student-is-a-lora", "nat-model-is-a-lora",
        "sample-of-the-bundled-embedder", "sample-of-a-ranker", "teacher-is-an-embedding-model",
        "rationalyst-is-an-embedding-model", "scorer-is-a-ranker", "embedder-is-the-bundled-llm",
        "ranker-encoder-is-a-lora", "extract-with-a-nat-model-is-fine"])
def test_a_model_of_the_wrong_format_or_role_is_refused_with_what_it_is_and_must_be(
        db: Store, kind: str, params: dict[str, Any], fragments: list[str]) -> None:
    ids = _seed(db)
    params = {k: int(v.format(**ids)) if isinstance(v, str) and v.startswith("{") else v for k, v in params.items()}
    if not fragments:  # the positive case among them: the right format is taken
        _queued(db, kind, params)
        return
    message = _refused(db, kind, params)
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(("kind", "params"), [
    ("train-nat", {**TRAIN, "neg_model": "neg-lora"}),
    ("train-nat", {**TRAIN, "neg_model": "plain-lora"}),  # registered without a role: its format is what counts
    ("train-nce", {**TRAIN, "nat_model": "nat"}),
    ("score-samples", {"sample_job": "sampled", "ranker": "ranker"}),
    ("train-kd", {**TRAIN}),
    ("train-kd", {**TRAIN, "model": SMOLLM2}),
    ("sample", {"problems": "test", "model": "kd-lora"}),
    ("sample", {"problems": "test", "model": "nat"}),
    ("solve", {"problems": "test", "method": "rationalyst-explicit", "rationalyst": "plain-lora"}),
    ("prefilter", {"documents": "d1", "reference": ["train"]}),
    ("prefilter", {"documents": "d1", "reference": ["train"], "embed_model": "embedder"}),
    ("train-ranker", {"problems": "train", "teacher": TEACHER}),
    ("train-ranker", {"problems": "train", "teacher": TEACHER, "encoder": "student"}),
], ids=["neg-lora", "lora-without-a-role", "nat", "ranker", "base-student", "bundled-student", "sample-of-a-lora",
        "sample-of-a-nat-model", "rationalyst-lora", "bundled-embedder", "registered-embedder", "ranker-on-minilm",
        "ranker-on-a-causal-lm"])
def test_a_model_of_the_right_format_is_taken(db: Store, kind: str, params: dict[str, Any]) -> None:
    ids = _seed(db)
    _queued(db, kind, {k: ids[v] if k == "sample_job" else v for k, v in params.items()})


def test_a_model_a_parent_will_register_is_checked_against_what_its_kind_makes(db: Store) -> None:
    _seed(db)
    neg = _queued(db, "train-neg", {**TRAIN, "adapter_name": "n1"})
    kd = _queued(db, "train-kd", {**TRAIN, "adapter_name": "k1"})
    ranker = _queued(db, "train-ranker", {"problems": "train", "teacher": TEACHER, "ranker_name": "r1"})
    nat = _queued(db, "train-nat", {**TRAIN, "neg_model": "n1", "adapter_name": "t1"}, after=(neg,))
    assert f"parameter 'neg_model' of train-nat names model 'k1', a LoRA adapter (that job {kd} (train-kd) " \
           "registers: format lora, role kd)" in _refused(db, "train-nat", {**TRAIN, "neg_model": "k1"}, after=(kd,))
    # the default name, from the job's id, is a promise too
    unnamed = _queued(db, "train-ranker", {"problems": "train", "teacher": TEACHER})
    promised = f"ranker-job{unnamed}"
    assert f"'{promised}', a ranker" in _refused(db, "train-nat", {**TRAIN, "neg_model": promised}, after=(unnamed,))
    assert "'t1', a NAT model" in _refused(db, "train-nat", {**TRAIN, "neg_model": "t1"}, after=(nat,))
    _queued(db, "train-nce", {**TRAIN, "nat_model": "t1"}, after=(nat,))  # a grandparent's counts too
    sample = _queued(db, "sample", {"problems": "test", "model": "t1", "n_samples": 2, "temperature": 0.5},
                     after=(nat,))
    _queued(db, "score-samples", {"sample_job": sample, "ranker": "r1"}, after=(sample, ranker))
    assert "not a ranker" in _refused(db, "score-samples", {"sample_job": sample, "ranker": "k1"}, after=(sample, kd))


def test_train_rationalyst_makes_a_lora_or_with_lora_false_a_base_model() -> None:
    assert made("train-rationalyst", {"adapter_name": "a"}, 3) == Made("a", "lora", "rationalyst")
    assert made("train-rationalyst", {"lora": False}, 3) == Made("rationalyst-job3", "base", "rationalyst")
    assert made("sample", {}, 3) is None


# --- jobs that belong together ------------------------------------------------------------------------------------

def test_aggregate_takes_only_a_score_job_of_its_own_sample_job(db: Store) -> None:
    ids = _seed(db)
    message = _refused(db, "aggregate", {"sample_job": ids["sampled"], "score_samples_job": ids["score_other_sampled"]})
    assert message == (f"parameter 'score_samples_job' of aggregate names score-samples job "
                       f"{ids['score_other_sampled']}, whose sample_job is {ids['other_sampled']}, not this job's "
                       f"sample_job {ids['sampled']}; name a score-samples job of sample_job {ids['sampled']} (see "
                       "`rplat jobs ls --kind score-samples`).")
    # the old parameter name is the same parameter
    assert "whose sample_job is" in _refused(db, "aggregate", {"sample_job": ids["sampled"],
                                                               "score_job": ids["score_other_sampled"]})
    _queued(db, "aggregate", {"sample_job": ids["sampled"], "score_samples_job": ids["score_sampled"]})


def test_aggregate_votes_only_over_a_sampled_job_and_its_greedy_row_is_a_greedy_job_of_the_same_model(
        db: Store) -> None:
    ids = _seed(db)
    assert f"names sample job {ids['greedy']}, whose n_samples is 1, not > 1; name a sample job with n_samples > 1" \
        in _refused(db, "aggregate", {"sample_job": ids["greedy"]})
    assert "whose model is 'kd-lora', not 'student' like job" in _refused(
        db, "aggregate", {"sample_job": ids["sampled"], "greedy_sample_job": ids["greedy_kd"]})
    assert "whose n_samples is 4, not == 1" in _refused(
        db, "aggregate", {"sample_job": ids["sampled"], "greedy_sample_job": ids["other_sampled"]})
    _queued(db, "aggregate", {"sample_job": ids["sampled"], "greedy_sample_job": ids["greedy"],
                              "score_samples_job": ids["score_sampled"]})
    # a sample job stored under the old name of n_samples is read under its current name
    _queued(db, "aggregate", {"sample_job": ids["old_sampled"], "greedy_sample_job": ids["greedy"]})


def test_extract_takes_a_prefilter_job_of_its_own_documents(db: Store) -> None:
    ids = _seed(db)
    assert "whose documents is 'd2', not this job's documents 'd1'" in _refused(
        db, "extract-rationales", {"documents": "d1", "prefilter_job": ids["prefilter_d2"]})
    _queued(db, "extract-rationales", {"documents": "d1", "prefilter_job": ids["prefilter_d1"]})
    _queued(db, "extract-rationales", {"prefilter_job": ids["prefilter_d2"]})  # without documents: any prefilter job


# --- chain sets ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [row.name for row in TRAINING if row.labels] + ["train-ranker"])
def test_a_chain_set_that_does_not_exist_is_refused_by_every_kind_that_reads_chains(db: Store, kind: str) -> None:
    _seed(db)
    extra = {"neg_model": "neg-lora"} if kind == "train-nat" else {"nat_model": "nat"} if kind == "train-nce" else {}
    params = {**TRAIN, **extra, "teacher": "nobody"}
    if kind == "train-ranker":
        params = {"problems": "train", "teacher": "nobody"}
    assert _refused(db, kind, params) == (
        f"parameter 'teacher' of {kind} names chain set 'nobody', which has no chains on dataset 'train' (its "
        f"teachers: {TEACHER}; nor does a job it runs --after collect them); import them with `rplat import chains "
        "FILE --teacher nobody --dataset train` or collect them with a collect-chains job.")
    _queued(db, kind, {**params, "teacher": TEACHER})


def test_a_chain_set_a_parent_collects_is_taken_on_its_dataset_only(db: Store) -> None:
    _seed(db)
    collect = _queued(db, "collect-chains", {"problems": "train", "model": "student"})  # teacher: the model's name
    named = _queued(db, "collect-chains", {"problems": "test", "model": "student", "teacher": "mine"})
    _queued(db, "train-kd", {**TRAIN, "teacher": "student"}, after=(collect,))
    _queued(db, "train-ranker", {"problems": "test", "teacher": "mine"}, after=(named,))
    assert "names chain set 'student', which has no chains on dataset 'test' (it holds no chains" in _refused(
        db, "train-kd", {**TRAIN, "problems": "test", "teacher": "student"}, after=(collect,))
    assert "chain set 'mine'" in _refused(db, "train-kd", {**TRAIN, "teacher": "mine"}, after=(named,))


def test_train_sft_reads_no_chains_so_its_teacher_is_not_checked(db: Store) -> None:
    _seed(db)
    _queued(db, "train-sft", {**TRAIN, "teacher": "nobody"})


# --- pipelines: the same checks, the sentence naming the option -------------------------------------------------

def _tdg(**changes: Any) -> TdgPipeline:
    return TdgPipeline(**{"problems": "train", "test": "test", "student": "student", "teacher": TEACHER,
                          "experiment": None, **changes})


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"student": BUNDLED_EMBEDDER}, f"--student names model '{BUNDLED_EMBEDDER}', an embedding model"),
    ({"student": "embedder"}, "--student names model 'embedder', an embedding model (registered: format embedding)"),
    ({"student": "kd-lora"}, "--student names model 'kd-lora', a LoRA adapter"),
    ({"teacher": BUNDLED_EMBEDDER}, f"--teacher names model '{BUNDLED_EMBEDDER}', an embedding model"),
    ({"teacher": "ranker"}, "--teacher names model 'ranker', a ranker"),
    ({"overrides": {"asc-sample": {"n": 1}}}, "its sample job would draw n_samples=1 at temperature 0.7"),
    ({"overrides": {"asc-sample": {"n_samples": 1}}}, "would draw n_samples=1"),
    ({"overrides": {"asc-sample": {"temperature": 0}}}, "would draw n_samples=16 at temperature 0"),
    ({"asc_samples": 1}, "--asc-samples N > 1"),
    ({"asc_temperature": 0.0}, "at temperature 0.0"),
    ({"overrides": {"train-nat": {"neg_model": "embedder"}}}, "parameter 'neg_model' of train-nat names model "
                                                              "'embedder', an embedding model"),
    ({"overrides": {"score-samples": {"ranker": "kd-lora"}}}, "parameter 'ranker' of score-samples"),
    ({"overrides": {"train-kd": {"teacher": "nobody"}}}, "parameter 'teacher' of train-kd names chain set 'nobody'"),
], ids=["student-bundled-embedder", "student-embedder", "student-lora", "teacher-bundled-embedder", "teacher-ranker",
        "asc-sample-old-name-n-1", "asc-sample-n-samples-1", "asc-sample-greedy", "asc-samples-option-1",
        "asc-temperature-option-0", "file-neg-model", "file-ranker", "file-teacher"])
def test_pipeline_tdg_refuses_what_enqueue_refuses_and_queues_nothing(db: Store, changes: dict[str, Any],
                                                                      fragment: str) -> None:
    _seed(db)
    before = _jobs(db)
    with pytest.raises(UserError) as refused:
        _tdg(**changes).enqueue(Queue(db.engine()))
    assert fragment in str(refused.value)
    assert _jobs(db) == before


def test_pipeline_tdg_takes_a_causal_lm_and_a_sampled_asc_job_from_the_params_file(db: Store) -> None:
    _seed(db)
    ids = _tdg(overrides={"asc-sample": {"n_samples": 3, "temperature": 0.5}}).enqueue(Queue(db.engine()))
    with transaction(db.engine()) as s:
        sampled = s.get(Job, ids["asc"]["sample"]).params
    assert (sampled["n_samples"], sampled["temperature"]) == (3, 0.5)
    # a teacher model collects the chains the training kinds then read; ASC off ignores the asc-sample key
    ids = _tdg(teacher="student", experiment=None, asc_samples=0,
               overrides={"asc-sample": {"n_samples": 1}}).enqueue(Queue(db.engine()))
    assert ids["collect"] is not None and ids["asc"] is None


def test_pipeline_rationalyst_refuses_a_model_it_cannot_fine_tune(db: Store) -> None:
    _seed(db)
    for model, what in (("embedder", "an embedding model"), ("kd-lora", "a LoRA adapter")):
        with pytest.raises(UserError, match=f"--model names model '{model}', {what}"):
            RationalystPipeline(documents="d1", problems="train", model=model).enqueue(Queue(db.engine()))


# --- the declarations themselves ----------------------------------------------------------------------------------

def _built_in() -> dict[str, kinds.JobKind]:
    return {name: kind for name, kind in kinds.all_kinds().items() if kind.handler.startswith("rplat.")}


def test_every_model_reference_of_every_kind_states_the_formats_it_takes() -> None:
    untyped = [(name, field) for name, kind in _built_in().items() for field, ref in references(kind.params)
               if ref.target == "model" and not ref.formats]
    assert untyped == []


def test_every_relation_a_reference_declares_names_fields_that_exist() -> None:
    for name, kind in _built_in().items():
        fields = kind.params.model_fields
        for field, ref in references(kind.params):
            for own in filter(None, (ref.of, ref.like, ref.dataset)):
                assert own in fields, (name, field, own)
            if ref.target == "job":
                assert ref.kind is not None, (name, field)
                theirs = kinds.get(ref.kind).params.model_fields
                for other in [*filter(None, (ref.of,)), *ref.alike, *(need.field for need in ref.needs)]:
                    assert other in theirs, (name, field, other)
            if ref.target == "chains":
                assert ref.dataset is not None and Ref("dataset", kind="problems") in fields[ref.dataset].metadata


def test_what_each_kind_makes_is_declared_and_matches_the_table() -> None:
    makes = {name: meta for name, kind in _built_in().items() for field in kind.params.model_fields.values()
             for meta in field.metadata if isinstance(meta, Makes)}
    assert set(makes) == {row.name for row in TRAINING} | {"train-ranker", "train-rationalyst"}
    for row in TRAINING:  # each training kind registers its model under the table row's setting as its role
        assert (makes[row.name].format_of({}), makes[row.name].role) == (
            "nat" if row.name == "train-nat" else "lora", row.setting)
    assert (makes["train-ranker"].format_of({}), makes["train-ranker"].role) == ("ranker", "ranker")
    chains = [name for name, kind in _built_in().items() for field in kind.params.model_fields.values()
              for meta in field.metadata if isinstance(meta, MakesChains)]
    assert chains == ["collect-chains"]
    assert set(CAUSAL_LM) == {"base", "lora", "nat"}
