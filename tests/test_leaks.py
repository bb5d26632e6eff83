"""score-rationales marks a rationale that copies its following text as a leak, never kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from test_rationalyst_jobs import seed_triples

from rplat.methods.leaks import overlap
from rplat.methods.loss_delta import loss_delta
from rplat.models import Job, Rationale, RationaleScore
from rplat.queue import Queue
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

from stores import Store

# (preceding, rationale, following, source): a copy, and two real rationales whose loss-delta verdicts differ
# (the tiny model's deltas are random, so tau decides: -1e9 for "pile" keeps, 1e9 for "gsm8k" drops).
TRIPLES = [
    ("Tom has 3 apples.", "He buys 4 more, so he has 7!", "He buys 4 more, so he has 7.", "pile"),
    ("The cat sat on the mat.", "cats like warm places", "It was warm.", "pile"),
    ("Compute 12 * 3.", "multiply", "12 * 3 = 36.", "gsm8k"),
]
TAUS = {"pile": -1e9, "gsm8k": 1e9}


def _seed(db: Store, tmp_path: Path) -> int:
    """A registered tiny model and a finished extraction job holding TRIPLES; returns that job's id."""
    return seed_triples(db, tmp_path, TRIPLES, "extract-insert")


def _score(db: Store, params: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[RationaleScore, Rationale]]]:
    job_id, _ = Queue(db.engine()).enqueue("score-rationales", {"model": "tiny", "tau_by_source": TAUS, **params})
    Runner(Queue(db.engine()), db.home, RunnerOptions(once=True, lease_seconds=30)).run()
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job.status == "succeeded", job.error
        rows = s.execute(select(RationaleScore, Rationale).join(Rationale)
                         .where(RationaleScore.job_id == job_id).order_by(Rationale.id)).all()
        return job.result, [tuple(r) for r in rows]


def test_a_copy_of_the_following_text_is_a_leak_and_not_kept(db: Store, tmp_path: Path) -> None:
    result, rows = _score(db, {"extract_job": _seed(db, tmp_path)})
    assert [(score.overlap, score.leak, score.kept) for score, _ in rows] == [
        (1.0, True, False), (0.0, False, True), (0.0, False, False)]
    for score, rationale in rows:
        assert score.overlap == overlap(rationale.preceding, rationale.rationale, rationale.following)
        if not score.leak:
            assert score.kept == loss_delta(score.lp_without, score.lp_with, tau=score.tau).kept
    # The copy's tau (-1e9) would have kept it: leak detection is what dropped it.
    assert (result["scored"], result["kept"], result["leaks"], result["leaks_dropped"]) == (3, 1, 1, 1)


def test_a_leak_threshold_above_one_keeps_the_copy(db: Store, tmp_path: Path) -> None:
    result, rows = _score(db, {"extract_job": _seed(db, tmp_path), "leak_threshold": 1.5})
    copy, _ = rows[0]
    assert (copy.overlap, copy.leak, copy.kept) == (1.0, False, True)
    assert (result["leaks"], result["leaks_dropped"]) == (0, 0)
