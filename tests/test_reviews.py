"""Human review (rplat.reviews, `rplat review`): append-only corrections, the views' effective values, jobs that read
them as of the last review they saw, undo, bulk files, and `rplat explain` showing the review. Both databases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from test_cli_errors import run_main

from rplat import reviews
from rplat.analytics import connect, run_query
from rplat.errors import UserError
from rplat.lineage import explain, render
from rplat.models import Job, Review, TeacherChain, TrainingExample
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

import factories as make
from stores import Store
from tiny_lm import tiny_and_chain_set

TEACHER = "gpt-x"
# (problem index, sample index, label, chain)
CHAINS = [(0, 0, "pos", "2 + 3 = 5, so \\boxed{5}."), (0, 1, "neg", "2 + 3 = 6, so \\boxed{6}."),
          (1, 0, "pos", "12 * 3 = 36, so \\boxed{36}."), (1, 1, "neg", "12 * 3 = 35, so \\boxed{35}.")]
TRAIN = {"problems": "train", "model": "tiny", "teacher": TEACHER, "max_steps": 1, "batch_size": 2, "grad_accum": 1,
         "lr": 0.02, "max_length": 64, "checkpoint_every": 1}


def _seed(db: Store, tmp_path: Path) -> dict[tuple[int, int], int]:
    with transaction(db.engine()) as s:
        problems = make.problems(s, tiny_and_chain_set(s, tmp_path), [
            {"external_id": "p0", "question": "Compute 2 + 3.", "answer": "5"},
            {"external_id": "p1", "question": "Compute 12 * 3.", "answer": "35"}])  # p1's gold is wrong
        return {(k, i): make.chain(s, problems[k], TEACHER, text, label, sample_idx=i).id
                for k, i, label, text in CHAINS}


def _cli(db: Store, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    out, err, code = run_main(list(args), monkeypatch, capsys, db.home)
    assert code == 0, err
    return out


def _view(db: Store, sql: str) -> list[tuple[object, ...]]:
    con = connect(db.url)
    try:
        return run_query(con, sql)[1]
    finally:
        con.close()


def _drain(db: Store) -> None:
    Runner(Queue(db.engine()), db.home, RunnerOptions(once=True, lease_seconds=30)).run()


def test_a_review_changes_the_views_effective_value_and_an_undo_puts_it_back(
        db: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    chain = _seed(db, tmp_path)
    neg = chain[0, 1]
    out = _cli(db, monkeypatch, capsys, "review", "chain", str(neg), "--label", "pos", "--reason",
               "6 is right under the problem's reading", "--reviewer", "ada", "--json")
    first = json.loads(out)
    assert first["value"] == "pos" and first["review"]["machine_value"] == "neg"
    assert first["review"]["reviewer"] == "ada" and first["source"] == f"review #{first['review']['id']}"
    assert _view(db, f"SELECT label, machine_label, label_source FROM chains WHERE chain_id = {neg}") == [
        ("pos", "neg", "review")]
    # export reads the same views: the label in effect, beside the machine's
    _cli(db, monkeypatch, capsys, "export", "chains", "--where", f"chain_id = {neg}", "--out", "chains.jsonl")
    (exported,) = [json.loads(line) for line in (db.home / "chains.jsonl").read_text().splitlines()]
    assert (exported["label"], exported["machine_label"], exported["label_source"]) == ("pos", "neg", "review")
    untouched = chain[0, 0]
    assert _view(db, f"SELECT label, machine_label, label_source FROM chains WHERE chain_id = {untouched}") == [
        ("pos", "pos", "machine")]

    # the same value again adds nothing
    again = json.loads(_cli(db, monkeypatch, capsys, "review", "chain", str(neg), "--label", "pos", "--reason", "x",
                            "--json"))
    assert again["review"] is None and again["value"] == "pos"

    # a problem's gold and the views that show it
    with transaction(db.engine()) as s:
        p1 = s.scalar(select(TeacherChain.problem_id).where(TeacherChain.id == chain[1, 0]))
    _cli(db, monkeypatch, capsys, "review", "problem", str(p1), "--gold", "36", "--reason", "12 * 3 is 36")
    assert _view(db, f"SELECT gold, machine_gold, gold_source FROM problems WHERE problem_id = {p1}") == [
        ("36", "35", "review")]
    assert {r[0] for r in _view(db, f"SELECT gold FROM chains WHERE problem_id = {p1}")} == {"36"}

    listed = json.loads(_cli(db, monkeypatch, capsys, "review", "ls", "--json"))
    assert [r["target"] for r in listed][-1] == "chain" and all(r["undoes"] is None for r in listed)
    assert json.loads(_cli(db, monkeypatch, capsys, "review", "ls", "--chain", str(neg), "--json"))[0]["id"] == \
        first["review"]["id"]

    # undo: a new row that puts the machine value back; nothing is deleted
    undone = json.loads(_cli(db, monkeypatch, capsys, "review", "undo", str(first["review"]["id"]), "--reason",
                             "misread the problem", "--json"))
    assert undone["review"]["undoes"] == first["review"]["id"] and undone["review"]["new_value"] is None
    assert undone["value"] == "neg" and undone["source"] == "machine"
    assert _view(db, f"SELECT label, machine_label, label_source FROM chains WHERE chain_id = {neg}") == [
        ("neg", "neg", "machine")]
    assert _view(db, f"SELECT count(*), count(*) FILTER (WHERE in_effect) FROM reviews WHERE target_id = {neg} "
                     "AND target = 'chain'") == [(2, 1)]
    with transaction(db.engine()) as s:
        assert s.scalar(select(func.count()).select_from(Review)) >= 3
        assert s.scalar(select(TeacherChain.label).where(TeacherChain.id == neg)) == "neg"  # machine row untouched


def test_undo_of_a_review_between_two_puts_back_the_earlier_review_and_only_the_latest_can_be_undone(
        db: Store, tmp_path: Path) -> None:
    chain = _seed(db, tmp_path)
    engine = db.engine()
    a = reviews.add(engine, "chain", chain[1, 1], "pos", reviewer="ada", reason="r1").review
    b = reviews.add(engine, "chain", chain[1, 1], "neg", reviewer="bob", reason="r2")
    assert b.review is not None and b.value == "neg"
    c = reviews.add(engine, "chain", chain[1, 1], "pos", reviewer="cy", reason="r3").review
    assert a is not None and c is not None
    with pytest.raises(UserError, match=f"review #{a.id} is not the latest .* undo #{c.id} first"):
        reviews.undo(engine, a.id, reviewer="ada", reason="oops")
    undone = reviews.undo(engine, c.id, reviewer="cy", reason="oops")
    assert undone.value == "neg" and undone.review is not None and undone.review.new_value == "neg"
    assert undone.describe() == (f"review #{undone.review.id} undoes review #{c.id}: chain {chain[1, 1]} label is neg "
                                 "again (an earlier review's value), by cy.")
    with transaction(engine) as s:
        assert reviews.in_effect(s, "chain", chain[1, 1]) == ("neg", f"review #{undone.review.id}")


def test_training_reads_the_reviewed_labels_records_the_last_review_and_a_rerun_after_new_reviews_is_a_new_job(
        db: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    chain = _seed(db, tmp_path)
    queue = Queue(db.engine())
    # chain (1, 1) is a positive the labeler missed; chain (0, 0) a negative it let through
    r1 = reviews.add(db.engine(), "chain", chain[1, 1], "pos", reviewer="ada", reason="35 is right here").review
    r2 = reviews.add(db.engine(), "chain", chain[0, 0], "neg", reviewer="ada", reason="wrong working").review
    assert r1 is not None and r2 is not None
    first, created = queue.enqueue("train-kd", TRAIN)
    assert created and queue.enqueue("train-kd", TRAIN) == (first, False)  # no new review: the same job
    _drain(db)
    job = db.succeeded(first)
    assert job.reviews_seen == r2.id
    with transaction(db.engine()) as s:
        trained = dict(s.execute(select(TrainingExample.chain_id, TrainingExample.label)
                                 .where(TrainingExample.job_id == first)).all())
    assert trained == {chain[1, 0]: "pos", chain[1, 1]: "pos"}  # (0, 0) dropped, (1, 1) added

    # explain: the example's chain shows its review, the job the last review it read
    with transaction(db.engine()) as s:
        example = s.scalar(select(TrainingExample.id).where(TrainingExample.job_id == first,
                                                             TrainingExample.chain_id == chain[1, 1]))
        text = render(explain(s, "training_examples", example))
    assert f"review #{r1.id}: label neg (machine) -> pos, by ada" in text and "35 is right here" in text
    assert f"read reviewed values as of review #{r2.id}" in text

    # a new review: the same params make a new job, which reads it; the old job's result stays as it was
    r3 = reviews.add(db.engine(), "chain", chain[0, 0], "pos", reviewer="bob", reason="working is fine").review
    assert r3 is not None
    second, created = queue.enqueue("train-kd", TRAIN)
    assert created and second != first
    _drain(db)
    assert db.succeeded(second).reviews_seen == r3.id
    with transaction(db.engine()) as s:
        trained = {r for r in s.scalars(select(TrainingExample.chain_id).where(TrainingExample.job_id == second))}
        assert trained == {chain[0, 0], chain[1, 0], chain[1, 1]}
        assert s.get(Job, first).reviews_seen == r2.id


def test_a_job_reads_reviews_as_of_its_pinned_review_so_a_resumed_attempt_reads_the_same_values(
        db: Store, tmp_path: Path) -> None:
    chain = _seed(db, tmp_path)
    engine = db.engine()
    before = reviews.add(engine, "chain", chain[0, 1], "pos", reviewer="ada", reason="r").review
    assert before is not None
    with transaction(engine) as s:
        job = make.job(s, "train-kd", status="running")
        pinned = reviews.seen(s, job.id)
        job_id = job.id
    assert pinned == before.id
    reviews.add(engine, "chain", chain[0, 1], "neg", reviewer="bob", reason="no, r was wrong")
    with transaction(engine) as s:
        assert reviews.seen(s, job_id) == pinned  # a later attempt: the same pin
        assert reviews.effective_labels(s, [chain[0, 1]], pinned) == {chain[0, 1]: "pos"}
        assert reviews.effective_labels(s, [chain[0, 1]]) == {chain[0, 1]: "neg"}


def test_rationale_keep_and_drop_and_the_reviewed_rationales_view(
        db: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from rplat.models import RationaleScore

    with transaction(db.engine()) as s:
        extractor = make.model(s, "extractor")
        extract = make.job(s, "extract-rationales")
        from rplat.prompts import TEMPLATES, ensure_template

        template_id = ensure_template(s, TEMPLATES["tdg-chain"])
        e = make.extraction(s, extract, extractor, template_id, "a b", "a [r] b")
        leak = make.rationale(s, e, "a", "the answer is b", "b", position=1)
        weak = make.rationale(s, e, "a", "think of b", "b", position=2)
        unscored = make.rationale(s, e, "a", "hmm", "b", position=3)
        score = make.job(s, "score-rationales")
        for r, kept in ((leak, True), (weak, False)):
            s.add(RationaleScore(job_id=score.id, rationale_id=r.id, scorer_model_id=extractor.id, lp_without=[],
                                 lp_with=[], gamma=1.0, s_without=0.0, s_with=0.0, loss_delta=0.1, tau=0.0,
                                 kept=kept))
        ids = (leak.id, weak.id, unscored.id, score.id)
    leak_id, weak_id, unscored_id, score_id = ids
    _cli(db, monkeypatch, capsys, "review", "rationale", str(leak_id), "--drop", "--reason", "restates the answer")
    _cli(db, monkeypatch, capsys, "review", "rationale", str(weak_id), "--keep", "--reason", "a useful hint")
    assert sorted(_view(db, "SELECT rationale_id, kept, machine_kept, kept_source FROM rationales "
                            f"WHERE rationale_id IN ({leak_id}, {weak_id})")) == sorted(
        [(leak_id, False, True, "review"), (weak_id, True, False, "review")])
    with transaction(db.engine()) as s:
        kept = s.scalars(select(RationaleScore.rationale_id).where(RationaleScore.job_id == score_id,
                                                                  reviews.rationale_kept(None))).all()
    assert kept == [weak_id]
    out, err, code = run_main(["review", "rationale", str(unscored_id), "--keep", "--reason", "x"], monkeypatch,
                              capsys, db.home)
    assert code == 2 and "has not been scored yet" in err


def test_a_reviewed_gold_answer_labels_imported_chains(db: Store, tmp_path: Path) -> None:
    """The chain importer labels against the gold in effect: a corrected gold answer makes the right chain positive."""
    src = tmp_path / "problems.jsonl"
    src.write_text(json.dumps({"id": "q1", "question": "Compute 12 * 3.", "answer": "35"}) + "\n")
    db.rplat("import", "problems", str(src), "--dataset", "math", "--id-field", "id", check=True)
    with transaction(db.engine()) as s:
        from rplat.models import Problem

        pid = s.scalar(select(Problem.id).where(Problem.external_id == "q1"))
    reviews.add(db.engine(), "problem", pid, "36", reviewer="ada", reason="12 * 3 is 36")
    chains = tmp_path / "chains.jsonl"
    chains.write_text("".join(json.dumps({"problem_id": "q1", "sample_idx": k, "chain": text}) + "\n" for k, text in
                              enumerate(["12 * 3 = 36. \\boxed{36}", "12 * 3 = 35. \\boxed{35}"])))
    proc = db.rplat("import", "chains", str(chains), "--teacher", "gpt", "--dataset", "math", "--layout", "flat",
                    "--workers", "1")
    if proc.returncode != 0:
        pytest.fail(proc.stderr)
    assert sorted(_view(db, "SELECT extracted_answer, label FROM chains")) == [("35", "neg"), ("36", "pos")]


def test_a_review_file_applies_all_or_nothing_and_twice_adds_nothing(
        db: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    chain = _seed(db, tmp_path)
    good = db.home / "reviews.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in [
        {"chain": chain[0, 1], "label": "pos", "reason": "r1"},
        {"chain": chain[1, 1], "label": "pos", "reason": "r2", "reviewer": "bob"}]) + "\n")
    out = _cli(db, monkeypatch, capsys, "review", "apply", "reviews.jsonl", "--reviewer", "ada")
    assert "2 reviews added, 0 already in effect." in out
    out = _cli(db, monkeypatch, capsys, "review", "apply", "reviews.jsonl", "--reviewer", "ada")
    assert "0 reviews added, 2 already in effect." in out
    with transaction(db.engine()) as s:
        assert sorted(s.scalars(select(Review.reviewer))) == ["ada", "bob"]
    bad = db.home / "bad.jsonl"
    bad.write_text(json.dumps({"chain": chain[0, 0], "label": "neg", "reason": "r"}) + "\n"
                   + json.dumps({"chain": chain[1, 0], "label": "maybe", "reason": "r"}) + "\n")
    out, err, code = run_main(["review", "apply", "bad.jsonl"], monkeypatch, capsys, db.home)
    assert code == 2 and "bad.jsonl line 2: a chain's label is pos or neg" in err
    with transaction(db.engine()) as s:
        assert s.scalar(select(func.count()).select_from(Review)) == 2  # line 1 was not written either


def test_the_database_refuses_to_change_or_delete_a_review(db: Store, tmp_path: Path) -> None:
    from sqlalchemy import delete, update
    from sqlalchemy.exc import DBAPIError

    chain = _seed(db, tmp_path)
    review = reviews.add(db.engine(), "chain", chain[0, 1], "pos", reviewer="ada", reason="r").review
    assert review is not None
    for statement in (update(Review).where(Review.id == review.id).values(new_value="neg"),
                      delete(Review).where(Review.id == review.id)):
        with pytest.raises(DBAPIError, match="append-only"), transaction(db.engine()) as s:
            s.execute(statement)
    with transaction(db.engine()) as s:
        assert s.scalar(select(Review.new_value).where(Review.id == review.id)) == "pos"
