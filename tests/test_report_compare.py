"""`rplat report compare` against hand-enumerated bootstrap intervals and exact McNemar p-values; Wilson intervals
and leaks in the other reports."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session
from test_analytics import run_cli
from test_cli_errors import assert_one_clear_sentence
from test_tdg_report import Seeder

from rplat.errors import UserError
from rplat.models import Job, Model, PrefilterScore, Problem, PromptTemplate, RationaleScore
from rplat.reports import compare_report, prefilter_report, rationalyst_report, tdg_report
from rplat.stats import wilson
from rplat.store import transaction

import factories as make
from stores import Store

# Credits per problem index (0..12 of the Seeder's problems). On the four problems 0-3 that both predicted, A
# (greedy) earns 1, 1, 1, 0 and B's asc-f3 0, 0, 0, 1: differences (1, 1, 1, -1). A also predicted problem 4 and B
# problem 5: left out.
A_GREEDY = {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0, 4: 1.0}
B_ASC = {0: 0.0, 1: 0.0, 2: 0.0, 3: 1.0, 5: 1.0}
B_SC = {0: 1.0, 1: 0.0, 2: 1.0, 3: 0.0, 5: 0.0}  # against A: differences (0, 1, 0, 0)
LONELY = {6: 1.0}  # an evaluate job sharing no problem with A


@dataclass
class World:
    a: int  # evaluate job (greedy)
    b: int  # aggregate job (sc and asc-f3)
    lonely: int  # evaluate job on other problems
    empty: int  # evaluate job still queued: no predictions
    sample: int  # a sample job: not comparable
    extract: int  # extract-rationales job (with a prompt template and a model)
    score: int  # score-rationales job
    kept_rationale: int
    problems: list[int]


def _predict(s: Session, job: Job, model: Model, method: str, credits: dict[int, float],
             problems: list[Problem]) -> None:
    for index, credit in credits.items():
        make.prediction(s, job, problems[index], model, method, "x", credit)


def seed_world(store: Store) -> World:
    """Two comparable runs, decoys, and a RATIONALYST funnel with a copy (a leak), a real rationale and a weak one."""
    with transaction(store.engine()) as s:
        seed = Seeder(s)
        problems = seed.problems
        student = make.model(s, "student")
        sample = seed.job("sample", {"model": "student", "problems": "test", "n": 4, "temperature": 0.8}, "cmp")
        a = seed.job("evaluate", {"sample_job": sample.id, "solve_job": None}, "cmp")
        b = seed.job("aggregate", {"sample_job": sample.id, "vote": "f3", "unanswered": "vote"}, "cmp")
        lonely = seed.job("evaluate", {"sample_job": sample.id, "solve_job": None}, "cmp")
        empty = seed.job("evaluate", {"sample_job": sample.id, "solve_job": None}, "cmp", status="queued")
        _predict(s, a, student, "greedy", A_GREEDY, problems)
        _predict(s, b, student, "asc-f3", B_ASC, problems)
        _predict(s, b, student, "sc", B_SC, problems)
        _predict(s, lonely, student, "greedy", LONELY, problems)

        # RATIONALYST: a solve evaluation of 3 right of 4, and the mining funnel
        solve = seed.job("solve", {"model": "student", "method": "rationalyst-implicit"}, "rat")
        evaluate = seed.job("evaluate", {"solve_job": solve.id, "sample_job": None}, "rat")
        make.evaluation(s, evaluate, student, "rationalyst-implicit", "all", [1.0, 1.0, 1.0, 0.0])
        template = PromptTemplate(name="extract-insert", version="1", body={"system": "insert rationales"},
                                  content_hash="t1")
        s.add(template)
        s.flush()
        extract = seed.job("extract-rationales", {"model": "student", "mode": "insert"}, "rat", model=student,
                           prompt_template_id=template.id)
        score = seed.job("score-rationales", {"extract_job": extract.id, "tau": 0.5}, "rat")
        docs = make.dataset(s, "docs", seed.job("import-documents", {}, None), "documents")
        prefilter = seed.job("prefilter", {"threshold": 0.3, "max_chars": 2000}, "rat")
        doc, *scored_docs = make.documents(s, docs, {"d0": "Tom has 3 apples.",
                                                     **{f"pf{i}": f"text {i}" for i in range(4)}})
        for d, cosine in zip(scored_docs, (0.9, 0.6, 0.4, 0.1), strict=True):  # 3 of 4 documents pass 0.3
            s.add(PrefilterScore(job_id=prefilter.id, document_id=d.id, embed_model_id=student.id, cosine=cosine,
                                 threshold=0.3, passed=cosine >= 0.3))
        extraction = make.extraction(s, extract, student, template.id, "Tom has 3 apples.", "...", document=doc,
                                     fidelity=None)
        kept_rationale = 0
        for position, (text, delta, overlap, leak, kept) in enumerate([
                ("He buys 2 more, so 5.", 41.7, 0.95, True, False),  # a copy of the following text
                ("Adding means counting on.", 2.0, 0.10, False, True),
                ("Apples are fruit.", -0.3, 0.05, False, False)]):
            r = make.rationale(s, extraction, "Tom has 3 apples.", text, "He buys 2 more, so 5.", position=position,
                               left_step=0)
            s.add(RationaleScore(job_id=score.id, rationale_id=r.id, scorer_model_id=student.id, lp_without=[-1.0],
                                 lp_with=[-0.5], gamma=0.9, s_without=-1.0, s_with=-1.0 + delta, loss_delta=delta,
                                 tau=0.5, kept=kept, overlap=overlap, leak=leak))
            if kept:
                kept_rationale = r.id
        collect = seed.job("collect-chains", {"teacher": "student", "n": 2}, "cmp")
        for i, label in enumerate(("pos", "neg")):
            make.chain(s, problems[0], "student", f"chain {i}", label, sample_idx=i, job=collect,
                       extracted_answer=str(i))
        return World(a=a.id, b=b.id, lonely=lonely.id, empty=empty.id, sample=sample.id, extract=extract.id,
                     score=score.id, kept_rationale=kept_rationale, problems=[p.id for p in problems])


@pytest.fixture
def world(db: Store) -> tuple[Store, World]:
    return db, seed_world(db)


def test_compare_gives_the_enumerated_bootstrap_interval_and_the_exact_mcnemar_p(world: tuple[Store, World]) -> None:
    db, w = world
    c = compare_report(db.engine(), str(w.a), f"{w.b}:asc-f3", seed=5)
    # Differences (1, 1, 1, -1): a resample holds K ~ Binomial(4, 1/4) copies of the -1, so its mean is 1 - K/2.
    # P(K = 4) = 1/256 < 2.5% < P(K >= 3) = 13/256, so the 2.5% quantile is 1 - 3/2 = -0.5; P(K = 0) = 81/256 > 2.5%,
    # so the 97.5% quantile is 1.
    assert (c["ci_low"], c["ci_high"]) == (-0.5, 1.0)
    assert c["difference"] == pytest.approx(0.5)
    # 3 problems A solves alone, 1 B alone: 2 * P(Binomial(4, 1/2) <= 1) = 2 * 5/16
    assert c["p_mcnemar"] == pytest.approx(0.625)
    assert (c["n"], c["both"], c["only_a"], c["only_b"], c["neither"]) == (4, 0, 3, 1, 0)
    assert (c["a"]["accuracy"], c["b"]["accuracy"]) == (0.75, 0.25)
    assert (c["a"]["ci_low"], c["a"]["ci_high"]) == pytest.approx(wilson(3, 4))
    assert (c["b"]["ci_low"], c["b"]["ci_high"]) == pytest.approx(wilson(1, 4))
    assert (c["a"]["left_out"], c["b"]["left_out"]) == (1, 1)  # problem 4 only in A, problem 5 only in B
    assert (c["a"]["kind"], c["a"]["method"], c["b"]["kind"], c["b"]["method"]) == ("evaluate", "greedy",
                                                                                      "aggregate", "asc-f3")
    assert (c["resamples"], c["seed"]) == (10_000, 5)


def test_compare_reads_the_named_method_and_counts_both_and_neither(world: tuple[Store, World]) -> None:
    db, w = world
    c = compare_report(db.engine(), str(w.a), f"{w.b}:sc", resamples=4000, seed=1)
    # Differences (0, 1, 0, 0): the mean is K/4 with K ~ Binomial(4, 1/4); P(K <= 2) = 243/256 < 97.5% <
    # P(K <= 3) = 255/256, so the upper quantile is 3/4; P(K = 0) = 81/256 puts the lower one at 0.
    assert (c["ci_low"], c["ci_high"]) == (0.0, 0.75)
    assert (c["both"], c["only_a"], c["only_b"], c["neither"]) == (2, 1, 0, 1)
    assert c["p_mcnemar"] == 1.0  # one discordant problem: 2 * P(Binomial(1, 1/2) <= 0) = 1
    assert c["b"]["accuracy"] == 0.5
    assert compare_report(db.engine(), str(w.a), f"{w.b}:sc", resamples=4000, seed=1) == c  # seeded


def test_compare_refuses_a_run_it_cannot_compare_in_one_sentence(world: tuple[Store, World]) -> None:
    db, w = world
    cases = [
        ("999", str(w.a), "job 999 does not exist, not an evaluate or aggregate job"),
        (str(w.sample), str(w.a), f"job {w.sample} is of kind sample, not an evaluate or aggregate job"),
        (str(w.empty), str(w.a), f"evaluate job {w.empty} (queued) has no predictions yet"),
        (str(w.a), str(w.b), f"aggregate job {w.b} stored several methods (asc-f3, sc); name one as {w.b}:METHOD"),
        (str(w.a), f"{w.b}:asc-f9", "has no predictions of method 'asc-f9'; its methods are asc-f3, sc"),
        (str(w.a), str(w.lonely), "predicted no problem in common (5 and 1 problems)"),
        (str(w.a), f"{w.b}:", "is not JOB or JOB:METHOD"),
    ]
    for run_a, run_b, expect in cases:
        with pytest.raises(UserError) as info:
            compare_report(db.engine(), run_a, run_b)
        assert expect in str(info.value), (run_a, run_b)


def test_report_compare_cli_prints_the_comparison_and_json(world: tuple[Store, World],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    db, w = world
    code, out, _ = run_cli(capsys, "report", "compare", str(w.a), f"{w.b}:asc-f3", "--seed", "5")
    printed = out.splitlines()
    assert code == 0
    # A's params predate the `unanswered` setting, so it dropped unanswered samples; B stored "vote"
    assert printed[0] == (f"A: evaluate job {w.a} greedy (model student, unanswered samples: drop): accuracy "
                          "75.00% (95% Wilson interval 30.1-95.4%)")
    assert printed[1].startswith(f"B: aggregate job {w.b} asc-f3 (model student, unanswered samples: vote): ")
    assert printed[2] == ("on 4 common problems; difference A - B: +50.00 points, paired bootstrap 95% interval "
                          "[-50.0, +100.0] (10000 resamples, seed 5)")
    assert printed[3] == "solved by both: 0, by A only: 3, by B only: 1, by neither: 0; exact McNemar p = 0.625"
    assert printed[4] == "left out (predicted by one run only): 1 of A's problems, 1 of B's"
    code, out, _ = run_cli(capsys, "report", "compare", str(w.a), f"{w.b}:asc-f3", "--seed", "5", "--json")
    assert code == 0 and json.loads(out) == compare_report(db.engine(), str(w.a), f"{w.b}:asc-f3", seed=5)
    code, out, err = run_cli(capsys, "report", "compare", str(w.a), str(w.b))
    assert_one_clear_sentence(out, err, code, ["several methods"])


def test_report_rationalyst_gives_wilson_intervals_and_counts_leaks_in_the_funnel(
        world: tuple[Store, World], capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = world
    report = rationalyst_report(db.engine(), experiment="rat")
    (result,) = report["results"]
    low, high = wilson(3, 4)
    assert (result["accuracy"], result["ci_low"], result["ci_high"]) == (0.75, round(low, 4), round(high, 4))
    funnel = report["funnel"]
    assert (funnel["prefilter_passed"], funnel["rationales"], funnel["scored"], funnel["leaks"], funnel["kept"]) == (
        3, 3, 3, 1, 1)
    code, printed, _ = run_cli(capsys, "report", "rationalyst", "--experiment", "rat")
    assert code == 0
    assert "scored: 3, leaks (restating the following text, never kept): 1, kept by loss delta: 1" in printed
    assert "75.00 [30.1, 95.4]" in printed


def test_report_tdg_cells_carry_the_wilson_interval_of_their_counts(db: Store,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with transaction(db.engine()) as s:
        seed = Seeder(s)
        kd = make.model(s, "e-kd", "lora", job=seed.job("train-kd", {}, "e"))
        carry = [p.id for p in seed.problems if p.subject == "carry"]
        seed.evaluated("e", kd, set(carry[:2]))  # 2 of 6 carry, 2 of 13 overall
    (row,) = tdg_report(db.engine(), "e")["table2"]
    assert (row["ci_low"]["carry"], row["ci_high"]["carry"]) == pytest.approx(tuple(100 * v for v in wilson(2, 6)))
    assert (row["ci_low"]["no-carry"], row["ci_high"]["no-carry"]) == pytest.approx((0.0, 100 * wilson(0, 5)[1]))
    assert (row["avg_ci_low"], row["avg_ci_high"]) == pytest.approx(tuple(100 * v for v in wilson(2, 13)))
    printed = run_cli(capsys, "report", "tdg", "--experiment", "e")[1]
    assert "33.33 [9.7, 70.0]" in printed  # 2 of 6: Wilson [9.68, 70.00]
    csv_header = run_cli(capsys, "report", "tdg", "--experiment", "e", "--csv")[1].splitlines()[0]
    assert "carry,carry_ci_low,carry_ci_high" in csv_header and "avg,avg_ci_low,avg_ci_high" in csv_header


def test_report_prefilter_gives_the_pass_rate_with_its_wilson_interval(world: tuple[Store, World],
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    db, _ = world
    report = prefilter_report(db.engine(), experiment="rat", examples=0)
    low, high = wilson(3, 4)
    assert (report["passed"], report["scored"]) == (3, 4)
    assert (report["pass_rate"], report["ci_low"], report["ci_high"]) == (0.75, round(low, 4), round(high, 4))
    code, printed, _ = run_cli(capsys, "report", "prefilter", "--experiment", "rat", "--examples", "0")
    assert code == 0 and printed.splitlines()[1] == "pass rate: 75.00% (95% Wilson interval 30.1-95.4%)"
