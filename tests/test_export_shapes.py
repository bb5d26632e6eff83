"""`rplat export --shape sft|dpo|kto|prm` and `--file-type hf`: a trainer's rows, with the ids they came from and the
labels in effect after review; each shape loads with `datasets` and goes through one step of its TRL trainer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from test_analytics import run_cli

from rplat import reviews
from rplat.errors import UserError
from rplat.export import export_view
from rplat.models import PromptTemplate, RationaleScore, SolveTrajectory, Step, StepCandidate
from rplat.store import transaction

import factories as make
from stores import Store

Q1, Q2, Q3 = "What is 3 + 4?", "What is 2 + 2?", "What is 5 + 1?"
POS, NEG, FLIPPED = "3 + 4 = 7.\nThe answer is 7.", "3 + 4 = 8.\nThe answer is 8.", "3 + 4 = 34.\nThe answer is 34."


@dataclass
class World:
    problems: list[int]
    imported: int  # the problems' import job
    collect: int  # the chains' job
    pos: int
    neg: int
    flipped: int  # machine label pos, reviewed to neg
    lone_neg: int  # Q2's only chain
    lone_pos: int  # Q3's only chain
    extract: int
    score: int
    kept: int
    dropped: int  # machine kept, reviewed to dropped
    rescued: int  # machine dropped, reviewed to kept
    solve: int
    right: int  # trajectory with correct = true
    wrong: int  # correct = false
    unjudged: int  # correct = NULL


def seed(db: Store) -> World:
    engine = db.engine()
    with transaction(engine) as s:
        imported = make.job(s, "import-problems")
        ds = make.dataset(s, "train", imported)
        p1, p2, p3 = make.problems(s, ds, [
            {"external_id": "q1", "question": Q1, "answer": "7", "solution": "Add 3 and 4.\nThe answer is 7."},
            {"external_id": "q2", "question": Q2, "answer": "4", "solution": None},
            {"external_id": "q3", "question": Q3, "answer": "6", "solution": "5 + 1 = 6."}])
        teacher = make.model(s, "teacher")
        template = PromptTemplate(name="collect-chat", version="1", body={"system": "solve"}, content_hash="c0ffee" * 4)
        s.add(template)
        s.flush()
        collect = make.job(s, "collect-chains", {"teacher": "teacher"}, model=teacher,
                           prompt_template_id=template.id)
        pos = make.chain(s, p1, "teacher", POS, "pos", sample_idx=0, job=collect)
        neg = make.chain(s, p1, "teacher", NEG, "neg", sample_idx=1, job=collect)
        flipped = make.chain(s, p1, "teacher", FLIPPED, "pos", sample_idx=2, job=collect)
        lone_neg = make.chain(s, p2, "teacher", "2 + 2 = 5.", "neg", job=collect)
        lone_pos = make.chain(s, p3, "teacher", "5 + 1 = 6.", "pos", job=collect)
        extract = make.job(s, "extract-rationales", {"model": "teacher"}, model=teacher)
        score = make.job(s, "score-rationales", {"extract_rationales_job": extract.id})
        extraction = make.extraction(s, extract, teacher, template.id, Q1, "...", problem=p1)
        rationales = []
        for i, (text, machine_kept) in enumerate([("Adding counts on.", True), ("Copy the answer.", True),
                                                 ("Numbers are numbers.", False)]):
            r = make.rationale(s, extraction, Q1, text, "The answer is 7.", position=i)
            s.add(RationaleScore(job_id=score.id, rationale_id=r.id, scorer_model_id=teacher.id, lp_without=[-1.0],
                                 lp_with=[-0.5], gamma=0.9, s_without=-1.0, s_with=-0.5, loss_delta=0.5, tau=0.1,
                                 kept=machine_kept, overlap=0.1, leak=False))
            rationales.append(r.id)
        solve = make.job(s, "solve", {"model": "teacher", "method": "rationalyst-implicit"}, model=teacher)
        trajectories = []
        for idx, correct in enumerate([True, False, None]):
            t = SolveTrajectory(job_id=solve.id, problem_id=p1.id, sample_idx=idx, method="rationalyst-implicit",
                                final_text="...", prediction="7", normalized_pred="7", correct=correct, n_steps=2,
                                stopped_reason="answer")
            s.add(t)
            s.flush()
            for k, chosen_text in enumerate([f"Take 3 and 4 ({idx}).", f"The answer is {7 + idx}."]):
                step = Step(job_id=solve.id, trajectory_id=t.id, step_idx=k, rationale_text="add",
                            rationale_mean_logprob=-0.5, chosen_candidate_idx=1, text=chosen_text)
                s.add(step)
                s.flush()
                s.add_all([StepCandidate(job_id=solve.id, step_id=step.id, candidate_idx=j, text=text,
                                         token_logprobs=[-0.1], score=-0.1 * j, chosen=j == 1)
                           for j, text in enumerate(["Something else.", chosen_text])])
            trajectories.append(t.id)
        w = World([p1.id, p2.id, p3.id], imported.id, collect.id, pos.id, neg.id, flipped.id, lone_neg.id,
                  lone_pos.id, extract.id, score.id, *rationales, solve.id, *trajectories)
    reviews.add(engine, "chain", w.flipped, "neg", reviewer="ann", reason="34 is not 3 + 4")
    reviews.add(engine, "rationale", w.dropped, False, reviewer="ann", reason="copies the answer")
    reviews.add(engine, "rationale", w.rescued, True, reviewer="ann", reason="a fine rationale")
    return w


@pytest.fixture
def world(db: Store) -> tuple[Store, World]:
    return db, seed(db)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_takes_positive_chains_kept_rationales_and_worked_solutions_as_reviewed(
        world: tuple[Store, World], tmp_path: Path) -> None:
    db, w = world
    assert export_view(db.url, "chains", tmp_path / "chains.jsonl", shape="sft") == 2
    assert lines(tmp_path / "chains.jsonl") == [
        {"prompt": Q1, "completion": POS, "chain_id": w.pos, "problem_id": w.problems[0], "job_id": w.collect},
        {"prompt": Q3, "completion": "5 + 1 = 6.", "chain_id": w.lone_pos, "problem_id": w.problems[2],
         "job_id": w.collect}]  # the flipped chain is a negative now
    assert export_view(db.url, "rationales", tmp_path / "rationales.jsonl", shape="sft") == 2
    assert [(r["prompt"], r["completion"], r["rationale_id"], r["problem_id"], r["extract_rationales_job_id"],
             r["score_rationales_job_id"]) for r in lines(tmp_path / "rationales.jsonl")] == [
        (Q1, "Adding counts on.", w.kept, w.problems[0], w.extract, w.score),
        (Q1, "Numbers are numbers.", w.rescued, w.problems[0], w.extract, w.score)]
    assert export_view(db.url, "problems", tmp_path / "solutions.jsonl", shape="sft",
                       where="dataset = 'train'") == 2
    assert lines(tmp_path / "solutions.jsonl") == [
        {"prompt": Q1, "completion": "Add 3 and 4.\nThe answer is 7.", "problem_id": w.problems[0],
         "job_id": w.imported},
        {"prompt": Q3, "completion": "5 + 1 = 6.", "problem_id": w.problems[2], "job_id": w.imported}]


def test_dpo_pairs_a_problems_positives_with_its_negatives_by_the_rule_given(world: tuple[Store, World],
                                                                             tmp_path: Path) -> None:
    db, w = world
    out = tmp_path / "dpo.parquet"
    assert export_view(db.url, "chains", out, shape="dpo") == 2  # one pair per negative of q1; q2, q3 have no pair
    table = pq.read_table(out)
    assert [(r["prompt"], r["chosen"], r["rejected"], r["chosen_chain_id"], r["rejected_chain_id"], r["problem_id"],
             r["chosen_job_id"], r["pairing"]) for r in table.to_pylist()] == [
        (Q1, POS, NEG, w.pos, w.neg, w.problems[0], w.collect, "per-negative"),
        (Q1, POS, FLIPPED, w.pos, w.flipped, w.problems[0], w.collect, "per-negative")]
    meta = json.loads(pq.read_metadata(out).metadata[b"rplat"])
    assert meta == {"view": "chains", "shape": "dpo", "where": None, "pairing": "per-negative", "rows": 2,
                    "jobs": [w.collect]}
    # a seeded sample: the same seed draws the same pairs, whatever else --where leaves in
    first = tmp_path / "s1.jsonl"
    assert export_view(db.url, "chains", first, shape="dpo", pairing="sample:1", seed=3) == 1
    again = tmp_path / "s2.jsonl"
    assert export_view(db.url, "chains", again, shape="dpo", pairing="sample:1", seed=3,
                       where=f"problem_id = {w.problems[0]}") == 1
    assert lines(first) == lines(again)
    assert lines(first)[0]["pairing"] == "sample:1 seed=3"
    assert lines(first)[0]["rejected_chain_id"] in (w.neg, w.flipped)
    draws = set()
    for s in range(8):
        assert export_view(db.url, "chains", tmp_path / f"d{s}.jsonl", shape="dpo", pairing="sample:1", seed=s) == 1
        draws.add(lines(tmp_path / f"d{s}.jsonl")[0]["rejected_chain_id"])
    assert draws == {w.neg, w.flipped}
    assert export_view(db.url, "chains", tmp_path / "all.jsonl", shape="dpo", pairing="sample:9") == 2


def test_kto_labels_each_chain_with_its_label_in_effect(world: tuple[Store, World], tmp_path: Path) -> None:
    db, w = world
    out = tmp_path / "kto.jsonl"
    assert export_view(db.url, "chains", out, shape="kto", where="teacher = 'teacher'") == 5
    assert {r["chain_id"]: (r["label"], r["completion"]) for r in lines(out)} == {
        w.pos: (True, POS), w.neg: (False, NEG), w.flipped: (False, FLIPPED), w.lone_neg: (False, "2 + 2 = 5."),
        w.lone_pos: (True, "5 + 1 = 6.")}


def test_prm_splits_chains_into_steps_and_reads_solve_trajectories_steps(world: tuple[Store, World],
                                                                         tmp_path: Path) -> None:
    db, w = world
    out = tmp_path / "prm.jsonl"
    assert export_view(db.url, "chains", out, shape="prm", where=f"problem_id = {w.problems[0]}") == 3
    assert {r["chain_id"]: (r["prompt"], r["completions"], r["labels"]) for r in lines(out)} == {
        w.pos: (Q1, ["3 + 4 = 7.", "The answer is 7."], [True, True]),
        w.neg: (Q1, ["3 + 4 = 8.", "The answer is 8."], [False, False]),
        w.flipped: (Q1, ["3 + 4 = 34.", "The answer is 34."], [False, False])}
    steps = tmp_path / "steps.parquet"
    assert export_view(db.url, "step_candidates", steps, shape="prm") == 2  # the unjudged trajectory is left out
    assert [(r["trajectory_id"], r["prompt"], r["completions"], r["labels"], r["job_id"])
            for r in pq.read_table(steps).to_pylist()] == [
        (w.right, Q1, ["Take 3 and 4 (0).", "The answer is 7."], [True, True], w.solve),
        (w.wrong, Q1, ["Take 3 and 4 (1).", "The answer is 8."], [False, False], w.solve)]


def test_hf_export_is_a_save_to_disk_dataset_with_a_card_and_imports_back(
        world: tuple[Store, World], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    db, w = world
    out = db.home / "dpo-pairs"
    db.set_env(monkeypatch)
    code, printed, _ = run_cli(capsys, "export", "chains", "--shape", "dpo", "--pairing", "all", "--file-type", "hf",
                               "--out", str(out))
    assert (code, printed) == (0, f"wrote 2 dpo rows from chains to {out}\n")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data-00000-of-00001.arrow", "dataset_info.json",
                                                     "state.json"]
    loaded = datasets.load_from_disk(str(out))
    assert loaded.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert sorted(loaded["rejected_chain_id"]) == sorted([w.neg, w.flipped])
    card = (out / "README.md").read_text()
    assert f"| {w.collect} | collect-chains | teacher | collect-chat | {'c0ffee' * 4} |" in card
    assert "Models: teacher." in card and "Pairing rule: all." in card
    assert "written by `rplat export chains --shape dpo --pairing all --file-type hf`" in card
    assert json.loads(loaded.info.description)["jobs"] == [w.collect]
    # a plain view exports as hf too, and the problem importer reads the directory back
    problems = db.home / "problems-hf"
    assert export_view(db.url, "problems", problems, file_type="hf", where="dataset = 'train'") == 3
    card = (problems / "README.md").read_text()
    assert f"| {w.imported} | import-problems | - | - | - |" in card
    assert "written by `rplat export problems --where \"dataset = 'train'\" --file-type hf`" in card
    code, _, err = run_cli(capsys, "import", "problems", str(problems), "--dataset", "copy", "--id-field", "problem",
                           "--answer-field", "gold")
    assert code == 0, err
    copied = tmp_path / "copy.jsonl"
    assert export_view(db.url, "problems", copied, where="dataset = 'copy'") == 3
    assert {(r["problem"], r["question"], r["gold"], r["solution"]) for r in lines(copied)} == {
        ("q1", Q1, "7", "Add 3 and 4.\nThe answer is 7."), ("q2", Q2, "4", None), ("q3", Q3, "6", "5 + 1 = 6.")}


def test_shapes_refuse_what_they_cannot_make_and_write_nothing(world: tuple[Store, World], tmp_path: Path) -> None:
    db, w = world
    tmp_path = tmp_path / "out"
    taken = tmp_path / "taken"
    taken.mkdir(parents=True)
    (taken / "x").write_text("mine")
    cases = [
        ("samples", {"shape": "dpo"}, "x.jsonl", "the dpo shape cannot be made from samples; it reads chains"),
        ("chains", {"shape": "ppo"}, "x.jsonl", "there is no shape 'ppo'"),
        ("chains", {"shape": "dpo", "where": f"problem_id = {w.problems[1]}"}, "x.jsonl",
         "the dpo shape found no pairs"),
        ("chains", {"shape": "sft", "where": "label = 'neg'"}, "x.hf", "found no positive chains"),
        ("chains", {"shape": "dpo", "pairing": "best"}, "x.jsonl", "--pairing 'best' is not a pairing rule"),
        ("chains", {"shape": "dpo", "pairing": "sample:0"}, "x.jsonl", "is not a pairing rule"),
        ("chains", {"shape": "dpo", "seed": 1}, "x.jsonl", "--seed only seeds --pairing sample:N"),
        ("chains", {"shape": "kto", "pairing": "all"}, "x.jsonl", "--pairing only applies to --shape dpo"),
        ("chains", {"shape": "prm"}, "x.csv", "the prm shape has list columns, which CSV cannot hold"),
        ("chains", {"file_type": "hf"}, "taken", "already exists"),
        ("chains", {"file_type": "jsonl"}, "taken", "is a directory"),
    ]
    for view, options, name, expect in cases:
        file_type = options.pop("file_type", "hf" if name.endswith(".hf") else None)
        with pytest.raises(UserError) as info:
            export_view(db.url, view, tmp_path / name, file_type=file_type, **options)
        assert expect in str(info.value), (view, options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert [p.name for p in taken.iterdir()] == ["x"]


# --- one step of each TRL trainer on what each shape wrote ------------------------------------------------


def _args(config: Any, tmp_path: Path, **extra: Any) -> Any:
    return config(output_dir=str(tmp_path / "trainer"), max_steps=1, per_device_train_batch_size=2, max_length=32,
                  report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
                  dataloader_num_workers=0, **extra)


def _load(path: Path, tmp_path: Path) -> Any:
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))


def _trained(trainer: Any) -> float:
    result = trainer.train()
    assert result.global_step == 1
    return float(result.training_loss)


@pytest.mark.parametrize("view", ["chains", "rationales", "problems"])
def test_sft_rows_train_one_step_of_sft_trainer(world: tuple[Store, World], tmp_path: Path, view: str) -> None:
    from trl import SFTConfig, SFTTrainer

    from tiny_lm import tiny_model, tiny_tokenizer

    db, _ = world
    export_view(db.url, view, tmp_path / "sft.jsonl", shape="sft")
    data = _load(tmp_path / "sft.jsonl", tmp_path)
    trainer = SFTTrainer(model=tiny_model(), args=_args(SFTConfig, tmp_path), train_dataset=data,
                         processing_class=tiny_tokenizer())
    assert _trained(trainer) > 0


def test_dpo_rows_train_one_step_of_dpo_trainer(world: tuple[Store, World], tmp_path: Path) -> None:
    from trl import DPOConfig, DPOTrainer

    from tiny_lm import tiny_model, tiny_tokenizer

    db, _ = world
    export_view(db.url, "chains", tmp_path / "dpo.jsonl", shape="dpo")
    trainer = DPOTrainer(model=tiny_model(), ref_model=tiny_model(), args=_args(DPOConfig, tmp_path),
                         train_dataset=_load(tmp_path / "dpo.jsonl", tmp_path), processing_class=tiny_tokenizer())
    assert _trained(trainer) == pytest.approx(0.6931, abs=1e-3)  # log 2: the policy starts as its reference


def test_kto_rows_train_one_step_of_kto_trainer(world: tuple[Store, World], tmp_path: Path) -> None:
    from trl import KTOConfig, KTOTrainer

    from tiny_lm import tiny_model, tiny_tokenizer

    db, _ = world
    export_view(db.url, "chains", tmp_path / "kto.jsonl", shape="kto")
    trainer = KTOTrainer(model=tiny_model(), ref_model=tiny_model(), args=_args(KTOConfig, tmp_path),
                         train_dataset=_load(tmp_path / "kto.jsonl", tmp_path), processing_class=tiny_tokenizer())
    assert _trained(trainer) >= 0


@pytest.mark.parametrize("view", ["chains", "step_candidates"])
def test_prm_rows_train_one_step_of_prm_trainer(world: tuple[Store, World], tmp_path: Path, view: str) -> None:
    from transformers import LlamaForTokenClassification
    from trl.experimental.prm import PRMConfig, PRMTrainer

    from tiny_lm import tiny_model, tiny_tokenizer

    db, _ = world
    export_view(db.url, view, tmp_path / "prm.jsonl", shape="prm")
    config = tiny_model().config
    config.num_labels = 2
    trainer = PRMTrainer(model=LlamaForTokenClassification(config), args=_args(PRMConfig, tmp_path),
                         train_dataset=_load(tmp_path / "prm.jsonl", tmp_path), processing_class=tiny_tokenizer())
    tokenized = trainer.train_dataset[0]
    assert sorted(set(tokenized["labels"])) in ([-100, 0], [-100, 1], [-100, 0, 1])  # one label per step's end
    assert _trained(trainer) > 0
