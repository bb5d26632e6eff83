"""collect-chains, sample and the evaluation of sample jobs: labels, resumption after kill -9, votes."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from rplat.errors import UserError
from rplat.llm import Completion, Sampling
from rplat.methods.answers import normalize
from rplat.methods.labelers import label_chain
from rplat.methods.votes import micro_accuracy
from rplat.models import Evaluation, GenerationCache, Job, Model, Prediction, Problem, Sample, TeacherChain
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.runners.tdg.chains import Item, chain_text, demonstrations, sample_chains
from rplat.runners.tdg.kinds import CollectChainsParams
from rplat.store import transaction

import factories as make
from killable_runners import StartRunner, count_rows, run_one, wait_for
from stores import Store
from tiny_lm import register_tiny, save_tiny, tiny_tokenizer


def _import_sums(db: Store, tmp_path: Path, n: int, name: str = "sums") -> None:
    """n problems "What is a + b?" with boxed worked solutions, in two subjects, through `rplat import problems`."""
    path = tmp_path / f"{name}.jsonl"
    with path.open("w") as f:
        for k in range(n):
            a, b = k, (3 * k) % 10  # every question distinct: no two problems share a prompt
            f.write(json.dumps({"id": f"s{k}", "question": f"What is {a} + {b}?", "answer": str(a + b),
                                "solution": f"{a} + {b} = {a + b}, so the answer is \\boxed{{{a + b}}}.",
                                "subject": "even" if k % 2 == 0 else "odd"}) + "\n")
    db.rplat("import", "problems", str(path), "--dataset", name, "--id-field", "id", "--subject-field", "subject",
             check=True)


def _add_tiny(db: Store, tmp_path: Path) -> None:
    db.rplat("models", "add", "tiny", str(save_tiny(tmp_path / "tiny")), "--role", "agent", check=True)


def _drain(db: Store) -> None:
    Runner(Queue(db.engine()), db.home, RunnerOptions(once=True, lease_seconds=30)).run()


def _chains(db: Store, teacher: str) -> list[tuple[Any, ...]]:
    with transaction(db.engine()) as s:
        return [tuple(r) for r in s.execute(
            select(TeacherChain.id, TeacherChain.problem_id, TeacherChain.sample_idx, TeacherChain.text,
                   TeacherChain.extracted_answer, TeacherChain.label, TeacherChain.hendrycks_correct,
                   TeacherChain.math_verify_correct, TeacherChain.n_chars, Problem.answer, TeacherChain.job_id)
            .join(Problem, Problem.id == TeacherChain.problem_id)
            .where(TeacherChain.teacher == teacher).order_by(TeacherChain.problem_id, TeacherChain.sample_idx))]


# --- pieces ---------------------------------------------------------------------------------------------


def test_a_chain_ends_where_the_model_starts_another_problem() -> None:
    assert chain_text(" 2 + 2 = 4. \\boxed{4}\n\nProblem:\nWhat is 1 + 1?\nSolution: 2") == "2 + 2 = 4. \\boxed{4}"
    assert chain_text("\nno next problem\n") == "no next problem"


def test_demonstrations_are_deterministic_and_never_the_problem_itself() -> None:
    pool = [(i, f"q{i % 6}", f"s{i}") for i in range(12)]  # q0 appears twice: ids 0 and 6
    first = demonstrations(pool, 0, "q0", 4, seed=3)
    assert len(first) == 4 and first == demonstrations(pool, 0, "q0", 4, seed=3)
    assert all(q != "q0" for q, _ in first)
    assert {demonstrations(pool, 0, "q0", 4, seed=s) for s in range(5)} != {first}  # the seed matters
    assert demonstrations(pool, 0, "q0", 0, seed=3) == ()
    assert len(demonstrations(pool, 0, "q0", 50, seed=3)) == 10  # all but the two copies of the problem


def test_topping_up_draws_the_new_samples_with_a_seed_of_their_own() -> None:
    calls: list[tuple[int | None, int, list[str]]] = []

    class Recording:
        def generate(self, prompts: list[str], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
            calls.append((sampling.seed, n, list(prompts)))
            return [[Completion(f"{p}/{sampling.seed}/{k}") for k in range(n)] for p in prompts]

    items = [Item(1, "7", "a", (0, 1, 2)), Item(2, "7", "b", (0, 1, 2)), Item(3, "7", "c", (2,))]
    got = sample_chains(Recording(), Sampling(temperature=0.5, seed=4), items)  # type: ignore[arg-type]
    assert calls == [(4, 3, ["a", "b"]), (4002, 1, ["c"])]
    assert [(it.problem_id, k, c.text) for it, k, c in got] == [
        (1, 0, "a/4/0"), (1, 1, "a/4/1"), (1, 2, "a/4/2"), (2, 0, "b/4/0"), (2, 1, "b/4/1"), (2, 2, "b/4/2"),
        (3, 2, "c/4002/0")]


def test_collect_chains_refuses_n_greedy_chains() -> None:
    with pytest.raises(ValueError, match="temperature 0 gives one chain"):
        CollectChainsParams(problems="p", n=8, temperature=0)


# --- collect-chains -------------------------------------------------------------------------------------


def test_collect_chains_labels_every_chain_once_and_a_rerun_adds_nothing(db: Store, tmp_path: Path) -> None:
    _add_tiny(db, tmp_path)
    _import_sums(db, tmp_path, 4)
    queue = Queue(db.engine())
    params = {"problems": "sums", "model": "tiny", "n": 3, "max_tokens": 12, "temperature": 0.9, "n_fewshot": 2,
              "batch_size": 3, "workers": 2}  # labelled in a pool of two processes: the verdicts of one
    first, _ = queue.enqueue("collect-chains", params)
    _drain(db)
    result = db.succeeded(first).result
    rows = _chains(db, "tiny")  # the teacher defaults to the model's name
    assert len(rows) == 12 and Counter(r[1] for r in rows) == Counter({pid: 3 for pid in {r[1] for r in rows}})
    assert {r[2] for r in rows} == {0, 1, 2} and all(r[10] == first for r in rows)
    for _id, _pid, _k, text, answer, label, hendrycks, mv, n_chars, gold, _job_id in rows:
        verdict = label_chain(text, gold, "hendrycks")
        assert (answer, label, hendrycks, mv) == (verdict.answer, verdict.label, verdict.hendrycks, verdict.math_verify)
        assert n_chars == len(text) and "\n\nProblem:" not in text and text == text.strip()
    assert len({r[3] for r in rows}) > 1  # sampled, not one chain repeated
    assert result["chains"] == 12 and result["cache_misses"] == 12
    assert result["pos"] + result["neg"] == 12 and result["pos"] == sum(r[5] == "pos" for r in rows)
    assert (result["workers"], result["labeler"], result["math_verify_timeouts"], result["timeout_chain_ids"]) == (
        2, "hendrycks", 0, [])
    second, _ = queue.enqueue("collect-chains", {**params, "batch_size": 2})  # another job (same params: the same)
    assert second != first
    _drain(db)
    again = db.succeeded(second).result
    assert _chains(db, "tiny") == rows
    assert again["chains"] == 12 and again["cache_misses"] == 0 and again["cache_hits"] == 0  # asked for nothing


class ScriptedServer:
    """A /v1/completions server whose choice k for "What is a + b?" is: k=0 a boxed right answer that runs on into
    another problem (this server ignores stop strings), k=1 a boxed wrong answer, k≥2 a right answer, unboxed."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        tokenizer = tiny_tokenizer()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                prompt = tokenizer.decode(body["prompt"])
                a, b = (int(x) for x in prompt.rsplit("What is ", 1)[1].split("?")[0].split(" + "))
                texts = [f" {a} + {b} = {a + b}. \\boxed{{{a + b}}}\n\nProblem:\nWhat is 1 + 1?\nSolution: 2",
                         f" It is \\boxed{{{a + b + 1}}}."] + [f" The answer is {a + b}."] * 8
                offset = body.get("seed", 0) % 1000  # a top-up asks with seed*1000 + its first index
                choices = [{"index": k, "text": texts[offset + k], "finish_reason": "stop",
                            "logprobs": {"token_logprobs": []}} for k in range(body["n"])]
                payload = json.dumps({"choices": choices}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.httpd.shutdown()


def test_collect_chains_through_a_server_labels_with_both_labelers_and_tops_up(
        db: Store, tmp_path: Path, scripted: ScriptedServer) -> None:
    _add_tiny(db, tmp_path)
    _import_sums(db, tmp_path, 3)
    queue = Queue(db.engine())
    params = {"problems": "sums", "model": "tiny", "teacher": "gpt-x", "backend": "openai", "endpoint": scripted.url,
              "n": 3, "n_fewshot": 2, "seed": 0, "batch_size": 2, "workers": 1}
    job, _ = queue.enqueue("collect-chains", params)
    _drain(db)
    result = db.succeeded(job).result
    rows = _chains(db, "gpt-x")
    assert [(r[2], r[5], r[6], r[7]) for r in rows] == [(0, "pos", True, True), (1, "neg", False, False),
                                                         (2, "neg", False, True)] * 3
    assert all(r[3].endswith(f"\\boxed{{{r[9]}}}") for r in rows if r[2] == 0)  # cut before the next problem
    assert result == {"teacher": "gpt-x", "problems": 3, "chains": 9, "pos": 3, "neg": 6, "problems_with_positive": 3,
                      "cache_hits": 0, "cache_misses": 9, "labeler": "hendrycks", "relabelled": 0, "workers": 1,
                      "math_verify_timeouts": 0, "timeout_chain_ids": []}
    # One request per problem for its 3 chains, the chain prompt after two demonstrations that are not the problem.
    assert len(scripted.requests) == 3 and {r["n"] for r in scripted.requests} == {3}
    assert all(r["stop"] == ["\n\nProblem:"] for r in scripted.requests)
    tokenizer = tiny_tokenizer()
    for request in scripted.requests:
        prompt = tokenizer.decode(request["prompt"])
        shots = prompt.split("\n\n")
        question = shots[-1].split("\n")[1]
        assert len(shots) == 3 and prompt.endswith("Solution:")
        assert all(s.startswith("Problem:\n") and question not in s and "\\boxed" in s for s in shots[:2])
    # n=5 later: only samples 3 and 4 are asked for, with a seed of their own.
    scripted.requests.clear()
    more, _ = queue.enqueue("collect-chains", {**params, "n": 5})
    _drain(db)
    assert db.succeeded(more).result["chains"] == 15
    assert [(r["n"], r["seed"]) for r in scripted.requests] == [(2, 3)] * 3
    assert _chains(db, "gpt-x")[:3] == rows[:3]
    # The same chain set collected with the other labeler: nothing generated, every stored chain relabelled from its
    # stored math-verify verdict (the unboxed right answers become positive).
    relabelled, _ = queue.enqueue("collect-chains", {**params, "n": 5, "labeler": "math-verify"})
    _drain(db)
    again = db.succeeded(relabelled).result
    assert (again["relabelled"], again["chains"], again["pos"], again["cache_misses"]) == (15, 15, 12, 0)
    assert [(r[5], r[6], r[7]) for r in _chains(db, "gpt-x")] == [
        ("pos" if r[7] else "neg", r[6], r[7]) for r in _chains(db, "gpt-x")]


def test_killed_collect_chains_resumes_without_regenerating_what_it_stored(
        db: Store, tmp_path: Path, runners: StartRunner) -> None:
    with transaction(db.engine()) as s:  # in-process: the two runners' start-ups are most of this test's time
        register_tiny(s, tmp_path)
    _import_sums(db, tmp_path, 30)
    total = 30 * 3
    job_id, _ = Queue(db.engine()).enqueue("collect-chains", {
        "problems": "sums", "model": "tiny", "n": 3, "max_tokens": 24, "temperature": 1.0, "n_fewshot": 1,
        "batch_size": 1}, max_attempts=3)
    first = runners("--once")
    wait_for(lambda: count_rows(db, TeacherChain, job_id) >= 6, "the first batches")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = _chains(db, "tiny")
    with db.engine().connect() as conn:
        cached_at_kill = conn.scalar(select(func.count()).select_from(GenerationCache))
    assert 6 <= len(before) < total and cached_at_kill >= len(before)
    run_one(db)  # waits for the dead runner's lease to expire, then takes the job
    job = db.succeeded(job_id)
    after = _chains(db, "tiny")
    assert job.attempts == 2 and len(after) == total
    assert Counter(r[1] for r in after).most_common(1)[0][1] == 3 and len({r[1] for r in after}) == 30
    assert [r for r in after if r[0] in {b[0] for b in before}] == before  # stored chains untouched
    # The second attempt asked the model only for chains the first had not generated.
    assert job.result["cache_misses"] == total - cached_at_kill
    assert job.result["cache_misses"] + job.result["cache_hits"] == total - len(before)


# --- sample and evaluate ---------------------------------------------------------------------------------


def test_sample_greedy_and_sampled_then_evaluate_from_the_rows(db: Store, tmp_path: Path) -> None:
    _add_tiny(db, tmp_path)
    _import_sums(db, tmp_path, 5)
    queue = Queue(db.engine())
    greedy, _ = queue.enqueue("sample", {"problems": "sums", "model": "tiny", "max_tokens": 10, "batch_size": 2})
    sampled, _ = queue.enqueue("sample", {"problems": "sums", "model": "tiny", "max_tokens": 10, "n": 4,
                                          "temperature": 0.8, "batch_size": 2, "fewshot": "sums", "n_fewshot": 1})
    evals = {job: queue.enqueue("evaluate", {"sample_job": job, "unanswered": "drop"}, after=[job])[0]
             for job in (greedy, sampled)}
    _drain(db)
    with transaction(db.engine()) as s:
        model_id = s.scalar(select(Model.id).where(Model.name == "tiny"))
        gold = dict(s.execute(select(Problem.id, Problem.answer)).all())
        subject = dict(s.execute(select(Problem.id, Problem.subject)).all())
        samples = {job: s.execute(select(Sample.problem_id, Sample.sample_idx, Sample.decoding, Sample.text,
                                         Sample.extracted_answer, Sample.correct, Sample.model_id,
                                         Sample.finish_reason)
                                  .where(Sample.job_id == job).order_by(Sample.problem_id, Sample.sample_idx)).all()
                   for job in (greedy, sampled)}
        predictions = {job: [(p.problem_id, p.method, p.answer, p.vote_mass, p.tie_size, p.credit, p.correct,
                              p.model_id)
                             for p in s.scalars(select(Prediction).where(Prediction.job_id == ev)
                                                .order_by(Prediction.problem_id))]
                       for job, ev in evals.items()}
        evaluations = {job: {(e.method, e.subject): (e.n, e.n_correct, e.accuracy, e.model_id)
                             for e in s.scalars(select(Evaluation).where(Evaluation.job_id == ev))}
                       for job, ev in evals.items()}
    for job in (greedy, sampled, *evals.values()):
        db.succeeded(job)
    assert len(samples[greedy]) == 5 and len(samples[sampled]) == 20
    assert {r.decoding for r in samples[greedy]} == {"greedy"} and {r.decoding for r in samples[sampled]} == {"sampled"}
    for rows in samples.values():
        for r in rows:
            verdict = label_chain(r.text, gold[r.problem_id], "math-verify")
            assert (r.extracted_answer, r.correct) == (verdict.answer, verdict.label == "pos")
            assert r.model_id == model_id and r.finish_reason in ("stop", "length")
    assert len({r.text for r in samples[sampled]}) > 1
    # Recomputed here: greedy takes the one answer; sc votes the normalised answers (unanswered samples dropped),
    # tie credit by correctness.
    for job, method in ((greedy, "greedy"), (sampled, "sc")):
        expected, credits = [], []
        for pid in sorted(gold):
            rows = [r for r in samples[job] if r.problem_id == pid]
            if method == "greedy":
                answer, mass, tie, credit = rows[0].extracted_answer, 1.0, 1, float(bool(rows[0].correct))
            else:
                votes = Counter(normalize(r.extracted_answer) for r in rows if r.extracted_answer is not None)
                votes.pop(None, None)
                top = max(votes.values(), default=0)
                tied = sorted(a for a, m in votes.items() if m == top)
                right = [a for a in tied if next(r for r in rows if normalize(r.extracted_answer) == a).correct]
                answer, mass, tie = (tied[0] if tied else None), float(top), max(len(tied), 1)
                credit = len(right) / len(tied) if tied else 0.0
            expected.append((pid, method, answer, mass, tie, credit, credit == 1.0, model_id))
            credits.append((subject[pid], credit))
        assert predictions[job] == expected
        assert evaluations[job] == {(method, k): (a.n, a.n_correct, a.accuracy, model_id)
                                    for k, a in micro_accuracy(credits).items()}
        assert evaluations[job][(method, "all")][0] == 5


def test_evaluating_a_sample_job_votes_with_tie_credit_and_micro_accuracy(db: Store) -> None:
    # (gold, subject, each sample's (extracted answer, correct)); the second problem ties 3 against 4.
    problems = [("7", "algebra", [("7", True), ("7.0", True), ("8", False), (None, False)]),
                ("3", "algebra", [("4", False), ("3", True), (None, False), (None, False)]),
                ("5", "geometry", [(None, False), ("6", False), ("6", False), ("5", True)])]
    with transaction(db.engine()) as s:
        importer = make.job(s, "import-problems")
        model = make.model(s, "tiny")
        dataset = make.dataset(s, "math", importer)
        jobs = {n: make.job(s, "sample", {"problems": "math", "model": "tiny", "n": n,
                                          "temperature": 0.0 if n == 1 else 0.7}) for n in (1, 4)}
        rows = make.problems(s, dataset, [{"external_id": f"p{k}", "subject": subject, "question": f"q{k}",
                                           "answer": gold} for k, (gold, subject, _) in enumerate(problems)])
        for problem, (_, _, answers) in zip(rows, problems, strict=True):
            for n, job in jobs.items():
                for i, (a, c) in enumerate(answers[:n]):
                    make.sample(s, job, problem, model, str(a), sample_idx=i,
                                decoding="greedy" if n == 1 else "sampled", extracted_answer=a, correct=c)
        job_ids = {n: job.id for n, job in jobs.items()}
    queue = Queue(db.engine())
    evals: dict[int | str, int] = {n: queue.enqueue("evaluate", {"sample_job": job})[0] for n, job in job_ids.items()}
    evals["drop"] = queue.enqueue("evaluate", {"sample_job": job_ids[4], "unanswered": "drop"})[0]
    _drain(db)
    got, accuracy = {}, {}
    with transaction(db.engine()) as s:
        for n, ev in evals.items():
            got[n] = [(p.method, p.answer, p.vote_mass, p.tie_size, p.credit, p.correct) for p in s.scalars(
                select(Prediction).where(Prediction.job_id == ev).order_by(Prediction.problem_id))]
            accuracy[n] = {e.subject: (e.method, e.n, e.n_correct, e.accuracy) for e in s.scalars(
                select(Evaluation).where(Evaluation.job_id == ev))}
    # By default a sample job's unanswered samples vote as one bucket (the authors' protocol): it wins problem 2.
    assert db.succeeded(evals[4]).result == {"method": "sc", "sample_job": job_ids[4], "unanswered": "vote",
                                             "problems": 3, "accuracy": 1 / 3}
    assert got[4] == [("sc", "7", 2.0, 1, 1.0, True), ("sc", None, 2.0, 1, 0.0, False),
                      ("sc", "6", 2.0, 1, 0.0, False)]
    assert accuracy[4] == {"algebra": ("sc", 2, 1.0, 0.5), "geometry": ("sc", 1, 0.0, 0.0),
                           "all": ("sc", 3, 1.0, 1 / 3)}
    # Dropped, they cast no vote: problem 2 ties 3 against 4.
    assert db.succeeded(evals["drop"]).result == {"method": "sc", "sample_job": job_ids[4], "unanswered": "drop",
                                                  "problems": 3, "accuracy": 0.5}
    assert got["drop"] == [("sc", "7", 2.0, 1, 1.0, True), ("sc", "3", 1.0, 2, 0.5, False),
                           ("sc", "6", 2.0, 1, 0.0, False)]
    assert accuracy["drop"] == {"algebra": ("sc", 2, 1.5, 0.75), "geometry": ("sc", 1, 0.0, 0.0),
                                "all": ("sc", 3, 1.5, 0.5)}
    assert got[1] == [("greedy", "7", 1.0, 1, 1.0, True), ("greedy", "4", 1.0, 1, 0.0, False),
                      ("greedy", None, 1.0, 1, 0.0, False)]
    assert accuracy[1] == {"algebra": ("greedy", 2, 1.0, 0.5), "geometry": ("greedy", 1, 0.0, 0.0),
                           "all": ("greedy", 3, 1.0, 1 / 3)}


def test_evaluate_refuses_a_job_that_is_not_a_sample_job_at_enqueue(db: Store) -> None:
    with transaction(db.engine()) as s:
        other_id = make.job(s, "solve", {"problems": "x"}).id
    with pytest.raises(UserError, match=f"names job {other_id} of kind 'solve', not a sample job"):
        Queue(db.engine()).enqueue("evaluate", {"sample_job": other_id})
    with transaction(db.engine()) as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.kind == "evaluate")) == 0
