"""`rplat import chains` (labelling in a pool of processes, one per core) against a one-process loop over the
same labelers on the same chains.

Command: .venv/bin/python bench/import_chains.py [--chains 60000] [--file RELEASED.jsonl] [--workers N] [--rounds 1]

The input is TDG's released layout, one MATH problem per line with its gold solution and the teacher's chains
(`{"question": "Problem:\\n…", "answer": "Solution:\\n… \\boxed{…}", "generated_answer": [8 chains], "level",
"type"}`). Without --file, a file of that shape is generated once under .cache/bench (seeded): 7,500 problems
with 8 chains each for 60,000, MATH-like answers of every common form (integers, fractions written `\\frac`,
`\\dfrac`, `a/b` or as decimals, radicals, multiples of pi, intervals, points, polynomials in any order,
percentages, units, degrees, words), right, wrong, stated without a box ("The answer is ...") or missing, so
both labelers do real work and disagree where the Hendrycks rule is strict (`2.5` against `\\frac{5}{2}`); a few
answers are heavy for SymPy (large powers, binomials, products of tangents) and three make math-verify give up
after its 5 s timeout. With --file, the authors' release (or any released-layout JSONL) is read instead.

rplat: `rplat import chains FILE --teacher bench` into a fresh SQLite store, in a subprocess, wall time (parse,
label in the pool, one transaction of inserts). Baseline: a fresh Python process that reads the same file and
calls `label_chain` (both labelers' verdicts, math-verify's answer cache) on every chain in one loop, wall
time; no database at all. Both processes start cold (imports and SymPy's first calls included). The label
counts of both are compared, so the two did the same work. With --rounds R the two alternate R times and the
best time of each counts. Figures are chains per second; the last line reads `ratio import_chains: X`
(baseline time / rplat time; X > 1: rplat is faster). The machine's load is shared, so
the ratio is only meaningful within one run. rplat's labelling processes run in sessions of their own (see
`rplat.methods.labelers.LabelPool`): with the kernel's autogroup scheduling, a busy machine shares the CPU per
session, so a pool in one session would get no more CPU than the one-process loop does.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.pop(0)  # bench/ must not shadow stdlib modules (bench/queue.py is "queue")

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench"
CHAINS_PER_PROBLEM = 8
SUBJECTS = ("Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra", "Number Theory", "Prealgebra",
            "Precalculus")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# (answer, gold): SymPy needs a noticeable time for these (0.1-1 s the first time).
HEAVY = (("2^{1000}", "2^{999}\\cdot 2"), ("(x+1)^{30}", "(1+x)^{30}"), ("\\binom{100}{50}",
         "100891344545564193334812497256"), ("\\tan(\\frac{\\pi}{7})\\tan(\\frac{2\\pi}{7})\\tan(\\frac{3\\pi}{7})",
         "\\sqrt{7}"), ("\\frac{x^{12}-1}{x-1}", "x^{11}+x^{10}+x^9+x^8+x^7+x^6+x^5+x^4+x^3+x^2+x+1"),
         ("(x^{3}+2)^{40}", "(2+x^3)^{40}"))
# (answer, gold): math-verify times out (5 s) comparing these; each appears once.
TIMEOUTS = (("7^{7^{7}}", "7^{823543}"), ("10^{10^{10}}", "10^{10^{9}}"), ("9^{9^{9}}", "9^{387420489}"))
FILLER = ("We begin by writing down what the problem gives us.", "Let us simplify the expression step by step.",
          "Substituting the known values, we obtain a simpler equation.", "Collecting like terms on one side gives",
          "By the formula for the sum of an arithmetic series,", "Squaring both sides and rearranging, we get",
          "Note that the two cases are symmetric, so it suffices to consider one of them.",
          "Multiplying through by the common denominator,", "Applying the Pythagorean theorem to the right triangle,",
          "Since the remainder must be less than the divisor,", "Therefore the required quantity equals")


def _answer(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """(gold answer as MATH boxes it, equivalent ways a chain may write it, wrong answers)."""
    family = rng.choice(("int", "int", "int", "frac", "frac", "decimal", "sqrt", "pi", "interval", "point",
                         "poly", "percent", "units", "degrees", "word", "negative"))
    if family == "int":
        n = rng.randint(0, 2000)
        return str(n), [str(n), f"{n:,}" if n >= 1000 else str(n)], [str(n + rng.randint(1, 9)), str(n * 2 + 1)]
    if family == "negative":
        n = rng.randint(1, 99)
        return f"-{n}", [f"-{n}", f"- {n}"], [str(n), f"-{n + 1}"]
    if family == "frac":
        b = rng.randint(2, 40)
        a = rng.choice([k for k in range(1, 3 * b) if _gcd(k, b) == 1 and k % b])
        ways = [f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}"]
        if a < 10 and b < 10:
            ways.append(f"\\frac{a}{b}")
        return f"\\frac{{{a}}}{{{b}}}", ways, [f"\\frac{{{a + 1}}}{{{b}}}", f"\\frac{{{b}}}{{{a}}}"]
    if family == "decimal":
        b = rng.choice((2, 4, 5, 8, 10, 20, 25))
        a = rng.choice([k for k in range(1, 4 * b) if _gcd(k, b) == 1])
        value = f"{a / b:g}"
        return f"\\frac{{{a}}}{{{b}}}", [f"\\frac{{{a}}}{{{b}}}", value], [f"{a / b + 0.5:g}", f"\\frac{{{b}}}{{{a}}}"]
    if family == "sqrt":
        k, m = rng.randint(2, 9), rng.choice((2, 3, 5, 6, 7, 10, 11))
        return f"{k}\\sqrt{{{m}}}", [f"{k}\\sqrt{{{m}}}", f"\\sqrt{{{k * k * m}}}", f"{k} \\sqrt {m}"], [
            f"{k + 1}\\sqrt{{{m}}}", f"\\sqrt{{{k * m}}}"]
    if family == "pi":
        k, m = rng.randint(1, 12), rng.randint(2, 6)
        return f"\\frac{{{k}\\pi}}{{{m}}}", [f"\\frac{{{k}\\pi}}{{{m}}}", f"\\frac{{{k}}}{{{m}}}\\pi"], [
            f"{k}\\pi", f"\\frac{{{k + 1}\\pi}}{{{m}}}"]
    if family == "interval":
        a = rng.randint(-9, 5)
        b = a + rng.randint(1, 9)
        return f"[{a}, {b})", [f"[{a}, {b})", f"[{a},{b})"], [f"({a}, {b})", f"[{a}, {b}]"]
    if family == "point":
        a, b = rng.randint(-9, 9), rng.randint(-9, 9)
        return f"({a}, {b})", [f"({a}, {b})", f"({a},{b})"], [f"({b}, {a})" if a != b else f"({a}, {b + 1})"]
    if family == "poly":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return f"x^2 + {a + b}x + {a * b}", [f"x^2 + {a + b}x + {a * b}", f"{a * b} + {a + b}x + x^2",
                                             f"(x + {a})(x + {b})"], [f"x^2 + {a * b}x + {a + b}"]
    if family == "percent":
        p = rng.randint(1, 99)
        return f"{p}\\%", [f"{p}\\%", f"{p}"], [f"{p + 5}\\%"]
    if family == "units":
        n = rng.randint(2, 500)
        return f"{n}\\text{{ cm}}", [f"{n}\\text{{ cm}}", str(n)], [f"{n + 10}\\text{{ cm}}"]
    if family == "degrees":
        n = rng.randint(10, 170)
        return f"{n}^\\circ", [f"{n}^\\circ", str(n), f"{n}^{{\\circ}}"], [f"{180 - n}^\\circ" if n != 90 else "45"]
    day = rng.randrange(7)
    return f"\\text{{{WEEKDAYS[day]}}}", [f"\\text{{{WEEKDAYS[day]}}}", WEEKDAYS[day]], [
        f"\\text{{{WEEKDAYS[(day + 1) % 7]}}}"]


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _prose(rng: random.Random) -> str:
    return " ".join(rng.choice(FILLER) + f" $x_{{{rng.randint(1, 9)}}} = {rng.randint(2, 99)}$."
                    for _ in range(rng.randint(4, 12)))


def _chain(rng: random.Random, answer: str | None, form: str) -> str:
    body = _prose(rng)
    if answer is None:  # cut off before the answer
        return "Solution:\n" + body
    if form == "unboxed":
        return f"Solution:\n{body} The answer is {answer}."
    return f"Solution:\n{body} Thus the answer is $\\boxed{{{answer}}}$."


def generate(path: Path, chains: int, seed: int = 0) -> None:
    """Write `chains` chains (8 per problem) in the released layout to `path`."""
    rng = random.Random(seed)
    problems = -(-chains // CHAINS_PER_PROBLEM)
    heavy_at = set(rng.sample(range(problems), min(problems, max(1, problems // 500))))
    timeout_at = dict(zip(rng.sample(range(problems), min(problems, len(TIMEOUTS))), TIMEOUTS, strict=False))
    written = 0
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        for k in range(problems):
            n = min(CHAINS_PER_PROBLEM, chains - written)
            texts: list[str] = []
            if k in timeout_at:
                hard, gold = timeout_at[k]
                texts = [_chain(rng, gold, "boxed") for _ in range(n - 1)] + [_chain(rng, hard, "boxed")]
            elif k in heavy_at:
                hard, gold = rng.choice(HEAVY)
                texts = [_chain(rng, rng.choice((hard, gold, "0")), "boxed") for _ in range(n)]
            else:
                gold, right, wrong = _answer(rng)
                for _ in range(n):
                    roll = rng.random()
                    if roll < 0.5:
                        texts.append(_chain(rng, right[0] if rng.random() < 0.6 else rng.choice(right), "boxed"))
                    elif roll < 0.82:
                        texts.append(_chain(rng, rng.choice(wrong), "boxed"))
                    elif roll < 0.95:
                        texts.append(_chain(rng, rng.choice(right + wrong), "unboxed"))
                    else:
                        texts.append(_chain(rng, None, "boxed"))
            subject = rng.choice(SUBJECTS)
            out.write(json.dumps({
                "question": f"Problem:\nProblem {k} of the benchmark ({subject}): find the value asked for. "
                            + _prose(rng)[:300],
                "answer": f"Solution:\n{_prose(rng)} So the answer is $\\boxed{{{gold}}}$.",
                "generated_answer": texts, "level": f"Level {rng.randint(1, 5)}", "type": subject}) + "\n")
            written += n
    tmp.replace(path)


def baseline(path: Path, labeler: str) -> None:
    """The one-process loop: read the file, judge every chain with `label_chain`, print the counts as JSON."""
    from rplat.methods.labelers import gold_answer, label_chain
    from rplat.prompts import TDG_SOLUTION_PREFIX, strip_prefix

    n = positives = disagree = timeouts = 0
    with path.open() as fh:
        for line in fh:
            record = json.loads(line)
            gold = gold_answer(strip_prefix(record["answer"], TDG_SOLUTION_PREFIX))
            for chain in record["generated_answer"]:
                v = label_chain(strip_prefix(chain, TDG_SOLUTION_PREFIX), gold, labeler)
                n += 1
                positives += v.label == "pos"
                disagree += v.hendrycks != v.math_verify
                timeouts += v.timed_out
    print(json.dumps({"chains": n, "positives": positives, "labelers_disagree": disagree, "timeouts": timeouts}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chains", type=int, default=60_000, help="chains to generate (without --file)")
    parser.add_argument("--file", type=Path, help="a released-layout JSONL to read instead (the authors' release)")
    parser.add_argument("--workers", type=int, default=None, help="rplat's labelling processes (default: cores)")
    parser.add_argument("--labeler", default="hendrycks", choices=("hendrycks", "math-verify"))
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds; the best time of each side counts")
    parser.add_argument("--baseline", type=Path, help=argparse.SUPPRESS)  # the baseline's own process
    args = parser.parse_args()
    if args.baseline is not None:
        baseline(args.baseline, args.labeler)
        return
    path = args.file
    if path is None:
        CACHE.mkdir(parents=True, exist_ok=True)
        path = CACHE / f"released-chains-{args.chains}.jsonl"
        if not path.exists():
            generate(path, args.chains)
    python = sys.executable
    cores = len(os.sched_getaffinity(0))
    print(f"input: {path} ({path.stat().st_size / 1e6:.1f} MB); {cores} cores")

    rplat_times, base_times = [], []
    for round_ in range(args.rounds):  # alternating, so a change of the machine's load hits both sides
        rplat_s, ours = _rplat(python, path, args.labeler, args.workers)
        base_s, theirs = _baseline(python, path, args.labeler)
        rplat_times.append(rplat_s)
        base_times.append(base_s)
        print(f"round {round_ + 1}: rplat {rplat_s:.1f} s, baseline {base_s:.1f} s, ratio {base_s / rplat_s:.2f} "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    rplat_s, base_s = min(rplat_times), min(base_times)
    n = ours["imported"]
    same = (n, ours["positives"], ours["labelers_disagree"], ours["math_verify_timeouts"]) == (
        theirs["chains"], theirs["positives"], theirs["labelers_disagree"], theirs["timeouts"])
    print(f"rplat import chains ({ours['workers']} labelling processes): {n:,} chains in {rplat_s:.1f} s = "
          f"{n / rplat_s:,.0f} chains/s ({ours['positives']:,} positive by {args.labeler}, "
          f"{ours['labelers_disagree']:,} where the labelers disagree, {ours['math_verify_timeouts']} math-verify "
          "timeouts)")
    print(f"baseline one-process label_chain loop: {theirs['chains']:,} chains in {base_s:.1f} s = "
          f"{theirs['chains'] / base_s:,.0f} chains/s ({theirs['positives']:,} positive, "
          f"{theirs['labelers_disagree']:,} disagree, {theirs['timeouts']} timeouts)")
    print("same verdict counts: " + ("yes" if same else "NO (a timeout under load can differ between runs)"))
    print(f"ratio import_chains: {base_s / rplat_s:.2f}")


def _rplat(python: str, path: Path, labeler: str, workers: int | None) -> tuple[float, dict[str, Any]]:
    """Wall time and summary of `rplat import chains` into a fresh SQLite store."""
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "RPLAT_HOME": home, "RPLAT_PROGRESS_SECONDS": "60"}
        env.pop("RPLAT_DATABASE_URL", None)
        subprocess.run([python, "-m", "rplat.cli", "init"], env=env, check=True, capture_output=True)
        command = [python, "-m", "rplat.cli", "import", "chains", str(path), "--teacher", "bench", "--labeler",
                   labeler, "--json"] + ([] if workers is None else ["--workers", str(workers)])
        start = time.perf_counter()
        done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        return time.perf_counter() - start, json.loads(done.stdout)


def _baseline(python: str, path: Path, labeler: str) -> tuple[float, dict[str, Any]]:
    """Wall time and counts of the one-process loop, in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([python, __file__, "--baseline", str(path), "--labeler", labeler], check=True,
                          capture_output=True, text=True)
    return time.perf_counter() - start, json.loads(done.stdout)


if __name__ == "__main__":
    main()
