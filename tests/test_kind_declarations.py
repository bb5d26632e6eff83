"""Every job kind is declared once and whole: each family's KINDS is what the registry serves, each TDG training
kind is a row of the paper's table that the pipeline, the report and the handlers read, and every training
kind's params come from one base, stored as they always were."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pytest

from rplat import kinds
from rplat.errors import UserError
from rplat.kinds import JobKind, Params
from rplat.pipelines import TDG_KINDS, TDG_SETTINGS
from rplat.references import Ref, made_model
from rplat.reports import _tdg_setting
from rplat.runners.params import FineTuneParams, TrainParams
from rplat.runners.tdg.kinds import (
    TRAINING,
    ChainTrainParams,
    TdgTraining,
    TdgTrainParams,
    TrainNtParams,
    training_of,
)
from rplat.runners.training.config import TrainConfig

# The rows of the paper's Table 2 this platform trains, in the paper's order (fine-tune on gold first).
PAPER_ROWS = ["sft", "kd", "mix", "nt", "ul", "neg", "nat", "nce"]
FAMILIES = sorted(ep.name for ep in entry_points(group="rplat.kinds"))


def _families() -> dict[str, ModuleType]:
    """Each family's kinds module, by the name of its `rplat.kinds` entry point."""
    return {ep.name: importlib.import_module(ep.module) for ep in entry_points(group="rplat.kinds")}


def _job_kinds_in(module: ModuleType) -> list[JobKind]:
    """Every JobKind a module holds at its top level, as a name of its own or in a top-level tuple or list."""
    found: list[JobKind] = []
    for value in vars(module).values():
        for item in value if isinstance(value, tuple | list) else [value]:
            if isinstance(item, JobKind):
                found.append(item)
    return found


def _training_kinds() -> list[JobKind]:
    return [kind for kind in kinds.all_kinds().values() if issubclass(kind.params, TrainParams)]


def test_every_family_entry_point_names_its_kinds_modules_kinds_list() -> None:
    assert FAMILIES == ["evaluation", "framework", "rationalyst", "tdg"]
    for ep in entry_points(group="rplat.kinds"):
        assert ep.value == f"rplat.runners.{ep.name}.kinds:KINDS"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_job_kind_a_family_module_declares_is_in_its_kinds(family: str) -> None:
    module = _families()[family]
    missing = [kind.name for kind in _job_kinds_in(module) if kind not in module.KINDS]
    assert missing == []


@pytest.mark.parametrize("family", FAMILIES)
def test_every_params_class_a_family_module_defines_belongs_to_one_of_its_kinds(family: str) -> None:
    """A kind dropped from KINDS (a row removed from a table) leaves its params class behind, used by nothing."""
    module = _families()[family]
    defined = [v for v in vars(module).values()
               if isinstance(v, type) and issubclass(v, Params) and v.__module__ == module.__name__]
    used = {cls for kind in module.KINDS for cls in kind.params.__mro__}
    assert [cls.__name__ for cls in defined if cls not in used] == []


def test_the_registry_serves_exactly_the_families_kinds_each_name_once() -> None:
    declared = [kind for module in _families().values() for kind in module.KINDS]
    assert len({kind.name for kind in declared}) == len(declared)
    # Kinds of the tests' own plugin (rplat_test_plugins) may be registered in this process too.
    built_in = {name: kind for name, kind in kinds.all_kinds().items() if kind.handler.startswith("rplat.")}
    assert built_in == {kind.name: kind for kind in declared}
    assert all(kinds.get(kind.name) is kind for kind in declared)


def test_every_handler_and_every_training_objective_resolves_to_a_function() -> None:
    for module in _families().values():
        for kind in module.KINDS:
            assert callable(kind.load_handler()), kind.name
    for row in TRAINING:
        assert callable(row.load_objective()), row.name


def test_the_tdg_training_table_holds_the_papers_rows_in_its_order_and_every_tdg_training_kind() -> None:
    assert [row.setting for row in TRAINING] == PAPER_ROWS
    tdg = _families()["tdg"]
    assert [kind for kind in tdg.KINDS if issubclass(kind.params, TdgTrainParams)] == list(TRAINING)
    assert all(isinstance(row, TdgTraining) and row.name == f"train-{row.setting}" for row in TRAINING)


def test_the_pipeline_and_the_report_know_exactly_the_tables_settings() -> None:
    assert list(TDG_SETTINGS) == ["base", *PAPER_ROWS]
    assert [name for name in TDG_KINDS if name.startswith("train-") and name != "train-ranker"] == \
        [f"train-{setting}" for setting in PAPER_ROWS]
    assert [_tdg_setting(f"train-{setting}") for setting in PAPER_ROWS] == PAPER_ROWS
    # A model no training kind of the table made (imported, or the untrained student) is the base row.
    assert [_tdg_setting(kind) for kind in (None, "import-models", "train-ranker", "train-rationalyst")] == \
        ["base"] * 4


def test_each_tdg_training_kinds_model_is_named_and_registered_after_its_setting() -> None:
    for row in TRAINING:
        assert made_model(row.name, {}, 7) == f"{row.setting}-job7"
        assert made_model(row.name, {"adapter_name": "mine"}, 7) == "mine"


def test_a_row_that_builds_on_another_names_an_earlier_rows_model_in_its_params() -> None:
    for i, row in enumerate(TRAINING):
        if row.builds_on is None:
            continue
        assert row.builds_on in [earlier.setting for earlier in TRAINING[:i]]
        field = row.params.model_fields[f"{row.builds_on}_model"]
        assert field.is_required() and any(isinstance(m, Ref) and m.target == "model" for m in field.metadata)
    assert {row.setting: row.builds_on for row in TRAINING if row.builds_on} == {"nat": "neg", "nce": "nat"}


def test_the_handler_finds_its_row_by_the_params_type() -> None:
    for row in TRAINING:
        p = kinds.parse(row.name, kinds.validate_params(row.name, _minimal(row.name)))
        assert training_of(p) is row


def test_which_examples_each_row_trains_on() -> None:
    rows = {row.setting: row for row in TRAINING}
    assert {s: row.labels for s, row in rows.items()} == {
        "sft": (), "kd": ("pos",), "mix": ("pos", "neg"), "nt": ("pos", "neg"), "ul": ("pos", "neg"),
        "neg": ("neg",), "nat": ("pos",), "nce": ("pos",)}
    gold = {s: row.gold(kinds.parse(row.name, kinds.validate_params(row.name, _minimal(row.name))))
            for s, row in rows.items()}
    assert [s for s, reads in gold.items() if reads] == ["sft", "nt"]
    without = TrainNtParams.model_validate({**_minimal("train-nt"), "include_gold": False})
    assert rows["nt"].gold(without) is False


def test_every_training_kind_takes_its_params_from_the_training_base() -> None:
    trained = {kind.name for kind in _training_kinds()}
    assert trained == {name for name in kinds.all_kinds() if name.startswith("train-")}
    assert trained == {*(row.name for row in TRAINING), "train-rationalyst", "train-ranker"}
    assert all(issubclass(row.params, FineTuneParams) for row in TRAINING)


# What every TDG training kind stored before its params came from the shared base (issue 15): stored jobs and
# their dedupe keys depend on exactly these names and values (but for one renamed since, train-rationalyst's
# score_job: docs/glossary.md).
TDG_STORED = {"problems": "p", "teacher": "t", "model": "smollm2-135m-instruct", "adapter_name": None, "lora_r": 8,
              "lora_alpha": 16.0, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "max_chars": 1600,
              "max_length": 512, "epochs": 3, "lr": 0.0003, "batch_size": 4, "grad_accum": 4, "warmup_ratio": 0.03,
              "warmup_steps": None, "max_steps": None, "limit": None, "checkpoint_every": 50, "seed": 42, "nproc": 1,
              "parallel": "ddp"}
STORED = {
    "train-sft": {**TDG_STORED, "teacher": None},
    "train-kd": TDG_STORED,
    "train-mix": TDG_STORED,
    "train-nt": {**TDG_STORED, "nt_lambda": 0.05, "include_gold": True},
    "train-ul": {**TDG_STORED, "ul_lambda": 0.05},
    "train-neg": TDG_STORED,
    "train-nat": {**TDG_STORED, "neg_model": "n", "unit_dim": 128, "unit_beta": 0.5, "log_every": 10},
    "train-nce": {**TDG_STORED, "max_chars": 1200, "nat_model": "n", "alpha": 0.5, "beta_offset": 0.5,
                  "kd_temperature": 1.0, "self_augment": 0, "augment_temperature": 0.7, "augment_max_tokens": 256},
    "train-rationalyst": {
        "score_rationales_job": 1, "model": "smollm2-135m-instruct", "adapter_name": None, "lora": True, "lora_r": 8,
        "lora_alpha": 16.0, "target_modules": ["q_proj", "v_proj"], "epochs": 3, "lr": 0.0002, "batch_size": 2,
        "grad_accum": 4, "warmup_ratio": 0.03, "warmup_steps": None, "lora_dropout": 0.05, "max_length": 1024,
        "max_steps": None, "eval_fraction": 0.05, "eval_every": 50, "checkpoint_every": 50, "seed": 0, "nproc": 1,
        "parallel": "ddp"},
    "train-ranker": {
        "problems": "p", "teacher": "t", "encoder": "all-minilm-l6-v2", "ranker_name": None, "heldout_fraction": 0.2,
        "p": 3.0, "epochs": 5, "lr": 2e-05, "weight_decay": 1e-05, "final_lr_ratio": 0.02, "batch_size": 1,
        "grad_accum": 1, "max_length": 512, "limit": None, "checkpoint_every": 50, "seed": 0},
}


def _minimal(kind: str) -> dict[str, Any]:
    """The params a job of this kind cannot do without (a TDG kind that reads chains needs their teacher)."""
    params = kinds.get(kind).params
    needed = [name for name, field in params.model_fields.items() if field.is_required()]
    return {name: STORED[kind][name] for name in needed + (["teacher"] if issubclass(params, ChainTrainParams) else [])}


@pytest.mark.parametrize("kind", sorted(STORED))
def test_a_training_jobs_stored_params_are_what_they_were(kind: str) -> None:
    stored = kinds.validate_params(kind, _minimal(kind))
    assert stored == STORED[kind]
    assert [type(v) for v in stored.values()] == [type(STORED[kind][k]) for k in stored]  # 16.0 stays a float


def test_train_config_hands_the_loop_every_knob_the_params_set() -> None:
    rationalyst = kinds.parse("train-rationalyst", STORED["train-rationalyst"])
    assert rationalyst.train_config() == TrainConfig(epochs=3, lr=2e-4, batch_size=2, grad_accum=4, warmup_ratio=0.03,
                                                     checkpoint_every=50, eval_every=50, seed=0)
    nt = TrainNtParams.model_validate({**_minimal("train-nt"), "warmup_steps": 2, "max_steps": 9, "lr": 1e-3,
                                       "parallel": "fsdp"})
    assert nt.train_config() == TrainConfig(epochs=3, lr=1e-3, batch_size=4, grad_accum=4, warmup_ratio=0.03,
                                            warmup_steps=2, max_steps=9, checkpoint_every=50, seed=42,
                                            parallel="fsdp")
    ranker = kinds.parse("train-ranker", {**STORED["train-ranker"], "checkpoint_every": 5})
    assert ranker.train_config() == TrainConfig(epochs=5, lr=2e-5, weight_decay=1e-5, batch_size=1, grad_accum=1,
                                                checkpoint_every=5, final_lr_ratio=0.02, seed=0)


@pytest.mark.parametrize("kind", sorted(set(STORED) - {"train-ranker"}))
def test_a_warmup_is_given_in_steps_or_as_a_ratio_not_both(kind: str) -> None:
    assert issubclass(kinds.get(kind).params, FineTuneParams)  # where the one warmup check lives
    with pytest.raises(UserError, match="give warmup_steps or warmup_ratio, not both"):
        kinds.validate_params(kind, {**_minimal(kind), "warmup_steps": 5, "warmup_ratio": 0.1})


@pytest.mark.parametrize("kind", sorted(set(STORED) - {"train-ranker"}))
def test_a_job_enqueued_with_warmup_steps_reads_back_from_its_stored_params(kind: str) -> None:
    stored = kinds.validate_params(kind, {**_minimal(kind), "warmup_steps": 5})
    assert stored["warmup_steps"] == 5 and "warmup_ratio" in stored  # every field is stored, the default ratio too
    assert kinds.parse(kind, stored).train_config().warmup_steps == 5


def test_the_kinds_and_their_params_import_without_torch() -> None:
    code = ("import sys, rplat.runners.tdg.kinds, rplat.runners.rationalyst.kinds, rplat.runners.params, "
            "rplat.pipelines, rplat.kinds; rplat.kinds.all_kinds(); assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
