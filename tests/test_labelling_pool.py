"""Labelling on every core: the pool gives one process's verdicts, math-verify's timeouts are counted per chain
(never printed bare), and a chain set is relabelled from its stored verdicts as a recorded job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_cli_errors import assert_one_clear_sentence, snapshot

from rplat.imports.chains import import_chains
from rplat.methods.labelers import label_chain, label_chains
from rplat.models import Job, TeacherChain
from rplat.store import transaction

from stores import TESTS, Store

RELEASED = TESTS / "data" / "chains" / "released"
ALGEBRA = RELEASED / "algebra.jsonl"
# math-verify gives up on this comparison after its 5 s timeout (SymPy cannot settle 10^(10^10) = 10^(10^9) fast).
SLOW_ANSWER, SLOW_GOLD = "10^{10^{10}}", "10^{10^{9}}"


def _released_chains() -> list[tuple[str, str | None]]:
    """Every chain of the released test files with its problem's gold answer, plus variants of each answer."""
    from rplat.methods.labelers import gold_answer

    out: list[tuple[str, str | None]] = []
    for file in sorted(RELEASED.rglob("*.jsonl")):
        for line in file.read_text().splitlines():
            record = json.loads(line)
            gold = gold_answer(record["answer"])
            out += [(chain, gold) for chain in record["generated_answer"]]
    variants = ["$x = \\boxed{0.5}$", "so \\boxed{\\frac12}", "The answer is 2.5", "\\boxed{[1,2)}",
                "\\fbox{50\\%}", "\\boxed 7$", "no answer at all", "\\boxed{\\text{(B)}}", "\\boxed{2\\sqrt{3}}"]
    out += [(text, gold) for text in variants for gold in ("\\frac{1}{2}", "2.5", "7", "\\sqrt{12}", None)]
    return out


def test_a_pool_of_two_gives_the_verdicts_of_one_process() -> None:
    chains = _released_chains()
    one = label_chains(chains, "math-verify", workers=1)
    assert one.verdicts == [label_chain(text, gold, "math-verify") for text, gold in chains]
    seen: list[int] = []
    pooled = label_chains(chains, "math-verify", workers=2, chunk=3, progress=seen.append)
    assert pooled.verdicts == one.verdicts
    assert sum(seen) == len(chains) and len(seen) == -(-len(chains) // 3)  # one report per chunk
    assert label_chains(chains, "hendrycks", workers=2, chunk=7).verdicts == label_chains(chains, "hendrycks").verdicts
    assert {v.label for v in one.verdicts} == {"pos", "neg"}


def test_a_math_verify_timeout_is_counted_per_chain_and_never_printed(capfd: pytest.CaptureFixture[str]) -> None:
    chains = [("so \\boxed{\\frac12}", "0.5"), (f"It is $\\boxed{{{SLOW_ANSWER}}}$.", SLOW_GOLD),
              ("\\boxed{3}", "3")]
    one = label_chains(chains, "math-verify", workers=1)
    assert one.timeouts == [1]
    assert [(v.math_verify, v.timed_out, v.label) for v in one.verdicts] == [
        (True, False, "pos"), (False, True, "neg"), (True, False, "pos")]
    # The cached verdict reports its timeout again, so a repeat (or another split of the chains) agrees.
    assert label_chains(chains, "math-verify", workers=2, chunk=1).timeouts == [1]
    assert label_chains(chains[1:2] * 2, "hendrycks").timeouts == [0, 1]
    captured = capfd.readouterr()
    assert "Timeout" not in captured.err + captured.out


def test_import_chains_in_a_pool_stores_what_one_process_stores(db: Store) -> None:
    one = import_chains(db.engine(), RELEASED, teacher="one", dataset="math", workers=1)
    two = import_chains(db.engine(), RELEASED, teacher="two", dataset="math", workers=2)
    assert (one["imported"], two["imported"], one["workers"], two["workers"]) == (20, 20, 1, 2)
    with transaction(db.engine()) as s:
        rows = s.execute(select(TeacherChain.teacher, TeacherChain.problem_id, TeacherChain.sample_idx,
                                TeacherChain.text, TeacherChain.extracted_answer, TeacherChain.label,
                                TeacherChain.hendrycks_correct, TeacherChain.math_verify_correct)).all()
    by = {t: sorted(tuple(r[1:]) for r in rows if r[0] == t) for t in ("one", "two")}
    assert by["one"] == by["two"] and len(by["one"]) == 20


def test_import_reports_timeouts_with_chain_ids_in_the_job_and_the_summary(db: Store, tmp_path: Path) -> None:
    file = tmp_path / "slow.jsonl"
    file.write_text(json.dumps({"question": "Problem:\nHow big?", "answer": f"Solution:\n$\\boxed{{{SLOW_GOLD}}}$",
                                "generated_answer": [f"It is $\\boxed{{{SLOW_ANSWER}}}$.", "I cannot tell."]}) + "\n")
    proc = db.rplat("import", "chains", str(file), "--teacher", "t", "--labeler", "math-verify", check=True)
    assert "Timeout" not in proc.stderr, proc.stderr
    with transaction(db.engine()) as s:
        slow = s.scalar(select(TeacherChain).where(TeacherChain.sample_idx == 0))
        job = s.scalar(select(Job).where(Job.kind == "import-chains"))
        assert slow is not None and job is not None
        assert (slow.label, slow.math_verify_correct) == ("neg", False)
        assert (job.result["math_verify_timeouts"], job.result["timeout_chain_ids"]) == (1, [slow.id])
    assert f"math-verify timed out on 1 (chain ids {slow.id})" in proc.stdout


def _labels(db: Store, teacher: str) -> list[tuple[str, str, bool | None, bool | None]]:
    with transaction(db.engine()) as s:
        return [tuple(r) for r in s.execute(  # type: ignore[misc]
            select(TeacherChain.label, TeacherChain.labeler, TeacherChain.hendrycks_correct,
                   TeacherChain.math_verify_correct).where(TeacherChain.teacher == teacher)
            .order_by(TeacherChain.id)).all()]


def _jobs(db: Store, kind: str) -> list[Job]:
    with transaction(db.engine()) as s:
        jobs = list(s.scalars(select(Job).where(Job.kind == kind).order_by(Job.id)))
        s.expunge_all()
        return jobs


def _relabel(db: Store, *args: str) -> dict[str, Any]:
    return json.loads(db.rplat("chains", "relabel", *args, "--json", check=True).stdout)


def test_a_second_import_with_the_other_labeler_relabels_the_set_and_says_so(db: Store) -> None:
    first = import_chains(db.engine(), ALGEBRA, teacher="gpt-3.5", dataset="math-train", workers=1)
    before = _labels(db, "gpt-3.5")
    assert {r[1] for r in before} == {"hendrycks"} and first["relabelled"] == 0
    out = db.rplat("import", "chains", str(ALGEBRA), "--teacher", "gpt-3.5", "--labeler", "math-verify",
                   "--workers", "1", check=True).stdout
    assert out.startswith("imported 0 chains of teacher gpt-3.5 into dataset math-train (8 already present, 8 of "
                          "them relabelled by math-verify;"), out
    after = _labels(db, "gpt-3.5")
    assert [(h, m) for _, _, h, m in after] == [(h, m) for _, _, h, m in before]  # nothing judged again
    assert after == [("pos" if m else "neg", "math-verify", h, m) for _, _, h, m in before]
    assert sum(r[0] != a[0] for r, a in zip(before, after, strict=True)) == 1  # 2.5 against 5/2
    second = _jobs(db, "import-chains")[-1]
    assert (second.params["labeler"], second.result["relabelled"], second.result["imported"]) == ("math-verify", 8, 0)


def test_rplat_chains_relabel_is_a_recorded_job_and_a_no_op_is_recorded_too(db: Store) -> None:
    import_chains(db.engine(), RELEASED, teacher="gpt-4", dataset="math", workers=1)
    import_chains(db.engine(), ALGEBRA, teacher="other", dataset="math", workers=1)
    hendrycks = _labels(db, "gpt-4")
    summary = _relabel(db, "--teacher", "gpt-4", "--dataset", "math", "--labeler", "math-verify")
    job_id = summary.pop("job_id")
    positives = sum(bool(m) for *_, m in hendrycks)
    assert summary == {"teacher": "gpt-4", "dataset": "math", "labeler": "math-verify", "chains": 20,
                       "relabelled": 20, "labelers_before": {"hendrycks": 20}, "positives": positives,
                       "negatives": 20 - positives}
    assert _labels(db, "gpt-4") == [("pos" if m else "neg", "math-verify", h, m) for _, _, h, m in hendrycks]
    assert {r[1] for r in _labels(db, "other")} == {"hendrycks"}  # another chain set is left alone
    (job,) = _jobs(db, "relabel-chains")
    assert (job.id, job.status, job.params, job.progress_done) == (
        job_id, "succeeded", {"teacher": "gpt-4", "dataset": "math", "labeler": "math-verify"}, 20)
    again = _relabel(db, "--teacher", "gpt-4", "--dataset", "math", "--labeler", "math-verify")
    assert (again["relabelled"], again["chains"]) == (0, 20) and len(_jobs(db, "relabel-chains")) == 2
    back = db.rplat("chains", "relabel", "--teacher", "gpt-4", "--dataset", "math", "--labeler", "hendrycks",
                    check=True).stdout
    assert back.startswith("relabelled 20 of 20 chains of teacher gpt-4 on dataset math by hendrycks")
    assert _labels(db, "gpt-4") == hendrycks


@pytest.mark.parametrize(("args", "expect"), [
    (["--teacher", "nobody", "--dataset", "math"], ["no chains of teacher 'nobody'", "gpt-4"]),
    (["--teacher", "gpt-4", "--dataset", "nowhere"], ["dataset 'nowhere' does not exist"]),
])
def test_relabel_refuses_an_unknown_chain_set_in_one_sentence(db: Store, args: list[str], expect: list[str]) -> None:
    import_chains(db.engine(), ALGEBRA, teacher="gpt-4", dataset="math", workers=1)
    before = snapshot(db)
    proc = db.rplat("chains", "relabel", *args, "--labeler", "math-verify")
    assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, expect)
    assert snapshot(db) == before


def test_import_refuses_zero_workers_in_one_sentence(db: Store) -> None:
    proc = db.rplat("import", "chains", str(ALGEBRA), "--teacher", "t", "--workers", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--workers" in proc.stderr


def _children() -> dict[int, list[int]]:
    """parent pid -> child pids, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(entry.name))
    return out


def _descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_killed_import_leaves_no_labelling_process_behind_and_writes_nothing(db: Store, tmp_path: Path) -> None:
    import signal
    import time

    # Four comparisons math-verify gives up on after 5 s each: two per pool process, ~10 s of labelling.
    slow = [("7^{7^{7}}", "7^{823543}"), (SLOW_ANSWER, SLOW_GOLD), ("9^{9^{9}}", "9^{387420489}"),
            ("2^{10^{8}}", "4^{5\\cdot 10^{7}}")]
    file = tmp_path / "slow.jsonl"
    file.write_text("".join(json.dumps({"question": f"Problem:\nHow big is number {k}?",
                                        "answer": f"Solution:\n$\\boxed{{{gold}}}$",
                                        "generated_answer": [f"It is $\\boxed{{{answer}}}$."]}) + "\n"
                            for k, (answer, gold) in enumerate(slow)))
    before = snapshot(db)
    proc = db.popen("import", "chains", str(file), "--teacher", "t", "--workers", "2")
    try:
        deadline = time.monotonic() + 60
        pool: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            tree = _children()
            pool = {w for server in tree.get(proc.pid, []) for w in tree.get(server, [])}  # forkserver's children
            if len(pool) >= 2:
                break
            time.sleep(0.2)
        assert len(pool) >= 2 and proc.poll() is None, "the import never started its labelling pool"
        helpers = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in helpers):
            time.sleep(0.2)
        assert not [p for p in helpers if _alive(p)], "labelling processes outlived their killed import"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert snapshot(db) == before
