"""The Problem page's queries: one problem across every view (its answers, steps, chains, samples and reviews)."""

from __future__ import annotations

from collections.abc import Iterable

import duckdb
import pandas as pd

from rplat.dashboard.queries import CREDIT, answer_shown, frame, tie_set


def problem(con: duckdb.DuckDBPyConnection, problem_id: int) -> pd.Series | None:
    """The problem's row of the `problems` view (gold in effect, the machine's and where it comes from), or None."""
    rows = frame(con, """
        SELECT problem_id, problem, dataset, benchmark, split, subject, level, question, solution, gold, machine_gold,
               gold_source, job_id
        FROM problems WHERE problem_id = ?""", [problem_id])
    return None if rows.empty else rows.iloc[0]


def questions(con: duckdb.DuckDBPyConnection, problem_ids: Iterable[object]) -> dict[int, str | None]:
    """The question of each of these problems (what names them on every page)."""
    ids = sorted({int(p) for p in problem_ids if p is not None and not pd.isna(p)})  # type: ignore[call-overload]
    if not ids:
        return {}
    rows = frame(con, "SELECT problem_id, question FROM problems WHERE list_contains(?, problem_id)", [ids])
    return {int(p): (q if isinstance(q, str) else None) for p, q in zip(rows["problem_id"], rows["question"],
                                                                        strict=True)}


def answers(con: duckdb.DuckDBPyConnection, problem_id: int) -> pd.DataFrame:
    """Every run's prediction for the problem, newest job first: the answer as shown (a tie marked), its credit,
    tie size, vote mass and margin, and the jobs behind it."""
    rows = frame(con, f"""
        SELECT run, answer, {CREDIT} AS credit, coalesce(tie_size, 1) AS tie_size, tied_answers, correct, vote_mass,
               margin, method, model, experiment, job_id, solve_job_id, sample_job_id, score_samples_job_id
        FROM predictions WHERE problem_id = ?
        ORDER BY job_id DESC, method = 'greedy' DESC, method = 'sc' DESC, method""", [problem_id])
    return rows.assign(tied_answers=[tie_set(t) for t in rows["tied_answers"]]).assign(
        shown=lambda r: [answer_shown(a, t, c, tied) for a, t, c, tied in
                         zip(r["answer"], r["tie_size"], r["credit"], r["tied_answers"], strict=True)])


def steps(con: duckdb.DuckDBPyConnection, problem_id: int) -> pd.DataFrame:
    """Every candidate of every step of the problem's solve trajectories (RATIONALYST's and the others'), in
    order of job, sample, step and candidate."""
    return frame(con, """
        SELECT job_id, method, model, trajectory_id, sample_idx, step_idx, rationale, rationale_mean_logprob,
               candidate_idx, candidate, score, chosen
        FROM step_candidates WHERE problem_id = ?
        ORDER BY job_id DESC, sample_idx, step_idx, candidate_idx""", [problem_id])


def why_chosen(candidates: pd.DataFrame) -> str:
    """Why the step's chosen candidate won, from its candidates' scores: "chosen: highest score s=-0.750 of 2
    candidates (next s=-3.500)", or what else is true (the only candidate, none chosen, not the highest)."""
    chosen = candidates[candidates["chosen"].fillna(False).astype(bool)]
    if chosen.empty:
        return "no candidate chosen"
    pick = chosen.iloc[0]
    scored = candidates.dropna(subset=["score"])
    if len(candidates) == 1:
        return "chosen: the only candidate" + (f" (s={pick['score']:.3f})" if pd.notna(pick["score"]) else "")
    if pd.isna(pick["score"]) or scored.empty:
        return f"chosen: candidate {int(pick['candidate_idx'])} (the candidates carry no score)"
    others = scored[scored["candidate_idx"] != pick["candidate_idx"]]["score"]
    best = float(scored["score"].max())
    if float(pick["score"]) >= best:
        tied = int((scored["score"] == best).sum())
        return (f"chosen: highest score s={pick['score']:.3f} of {len(candidates)} candidates"
                + (f" (tied with {tied - 1} other{'s' if tied > 2 else ''}; the first of them)" if tied > 1
                   else f" (next s={others.max():.3f})" if not others.empty else ""))
    return f"chosen: candidate {int(pick['candidate_idx'])}, s={pick['score']:.3f}, below the highest s={best:.3f}"


def chains(con: duckdb.DuckDBPyConnection, problem_id: int) -> pd.DataFrame:
    """All of the problem's teacher chains, by teacher and sample: label in effect, both labelers' verdicts and
    whether they disagree."""
    return frame(con, """
        SELECT chain_id, teacher, sample_idx, label, label_source, machine_label, extracted_answer,
               hendrycks_correct, math_verify_correct, labelers_disagree, labeler, n_chars, job_id, text
        FROM chains WHERE problem_id = ?
        ORDER BY teacher, sample_idx, chain_id""", [problem_id])


def samples(con: duckdb.DuckDBPyConnection, problem_id: int) -> pd.DataFrame:
    """The problem's samples of every sample job, each with the score of every ranker that scored it."""
    return frame(con, """
        SELECT s.sample_job_id, s.model, s.sample_idx, s.extracted_answer, s.correct, r.score, r.ranker,
               r.score_samples_job_id, r.truncated, s.finish_reason, s.decoding, s.sample_id, s.text
        FROM samples s
        LEFT JOIN sample_scores r ON r.sample_id = s.sample_id
        WHERE s.problem_id = ?
        ORDER BY s.sample_job_id DESC, r.score_samples_job_id DESC NULLS LAST, s.sample_idx""", [problem_id])


def reviews(con: duckdb.DuckDBPyConnection, problem_id: int) -> pd.DataFrame:
    """The reviews of the problem's gold answer and of its chains, oldest first, the ones in effect marked."""
    return frame(con, """
        SELECT review_id, target, target_id, field, machine_value, new_value, reviewer, reason, undoes, created_at,
               in_effect
        FROM reviews
        WHERE (target = 'problem' AND target_id = ?)
           OR (target = 'chain' AND target_id IN (SELECT chain_id FROM chains WHERE problem_id = ?))
        ORDER BY review_id""", [problem_id, problem_id])
