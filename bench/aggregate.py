"""ASC votes: the `aggregate` job's vectorised votes against a pure-Python loop over the problems.

Command: OMP_NUM_THREADS=1 .venv/bin/python bench/aggregate.py [--problems 100000] [--samples 16] [--rounds 2]

The data is what a sample job and a score job store for a student: per problem, 16 sampled answers (strings as
extracted; about 10% none), the right one with a per-problem chance drawn uniformly, wrong ones from a handful
of distractors, and ranker scores that lean higher on right answers. Both sides start from the same Python lists
(answers, scores, correctness per problem) and compute, for each of ASC's four vote functions (f0 = 1, f1 =
1 + 2s, f2 = 1 + s, f3 = s), every problem's winner, vote mass, tie size, margin and tie credit; the results are
asserted equal. rplat votes with `asc_votes` on the arrays the job builds once (`answer_codes`; that encoding is
timed and printed separately, with the end-to-end ratio); the baseline is the per-problem loop of the reference
code, a dict of masses per problem and vote function, on the lists. The last line reads `ratio aggregate: X`,
the votes' ratio (X > 1: rplat is faster).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time

sys.path.pop(0)  # bench/ must not shadow stdlib modules (bench/queue.py is "queue")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from rplat.methods.votes import TIE_TOLERANCE, Votes, answer_codes, asc_votes  # noqa: E402

FS = ("f0", "f1", "f2", "f3")
WEIGHT = {"f0": lambda s: 1.0, "f1": lambda s: 1 + 2 * s, "f2": lambda s: 1 + s, "f3": lambda s: s}
Problem = tuple[list[str | None], list[float], list[bool]]
Result = tuple[str | None, float, int, float, float]  # winner, mass, tie size, margin, credit
Ballots = tuple[np.ndarray, list[str], np.ndarray, np.ndarray]  # answer codes, their vocabulary, scores, correct


def problems(n: int, samples: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        gold, p_right = str(k % 97), rng.random()
        answers: list[str | None] = []
        scores, correct = [], []
        for _ in range(samples):
            u = rng.random()
            right = u < p_right * 0.9
            answer = gold if right else None if u > 0.9 else str(100 + int(rng.random() ** 2 * 6))
            answers.append(answer)
            correct.append(right)
            scores.append(min(1.0, max(0.0, rng.gauss(0.6 if right else 0.4, 0.2))))
        out.append((answers, scores, correct))
    return out


def naive(data: list[Problem]) -> dict[str, list[Result]]:
    """Per vote function and problem: masses in a dict, the top answers kept as a tie, the best other answer."""
    out: dict[str, list[Result]] = {f: [] for f in FS}
    for answers, scores, correct in data:
        for f in FS:
            weight = WEIGHT[f]
            mass: dict[str, float] = {}
            first: dict[str, bool] = {}
            for answer, score, right in zip(answers, scores, correct, strict=True):
                if answer is not None:
                    mass[answer] = mass.get(answer, 0.0) + weight(score)
                    first.setdefault(answer, right)
            if not mass:
                out[f].append((None, 0.0, 0, 0.0, 0.0))
                continue
            top = max(mass.values())
            floor = top - TIE_TOLERANCE * max(1.0, abs(top))
            tied = sorted(a for a, m in mass.items() if m >= floor)
            others = [m for a, m in mass.items() if a != tied[0]]
            margin = 0.0 if len(tied) > 1 else top - max(others) if others else top
            out[f].append((tied[0], top, len(tied), margin, sum(first[a] for a in tied) / len(tied)))
    return out


def encode(data: list[Problem]) -> Ballots:
    """What the aggregate job builds once from the stored rows: answer codes, scores and correctness as arrays."""
    codes, vocabulary = answer_codes([answers for answers, _, _ in data])
    scores = np.fromiter((x for _, s, _ in data for x in s), dtype=np.float64, count=codes.size).reshape(codes.shape)
    correct = np.fromiter((x for _, _, c in data for x in c), dtype=bool, count=codes.size).reshape(codes.shape)
    return codes, vocabulary, scores, correct


def ours(ballots: Ballots) -> dict[str, Votes]:
    """The aggregate job's votes: the four vote functions over all problems at once."""
    codes, _, scores, correct = ballots
    return asc_votes(codes, scores, FS, correct)


def results(ballots: Ballots, votes: dict[str, Votes]) -> dict[str, list[Result]]:
    vocabulary = ballots[1]
    return {f: list(zip([vocabulary[w] if w >= 0 else None for w in v.winner.tolist()], v.mass.tolist(),
                        v.tie_size.tolist(), v.margin.tolist(), v.credit.tolist(), strict=True))
            for f, v in votes.items() if v.credit is not None}


def same(a: dict[str, list[Result]], b: dict[str, list[Result]]) -> bool:
    return a.keys() == b.keys() and all(
        x[0] == y[0] and x[2] == y[2] and all(math.isclose(x[i], y[i], abs_tol=1e-9) for i in (1, 3, 4))
        for f in a for x, y in zip(a[f], b[f], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds; each side's best counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = problems(args.problems, args.samples, args.seed)
    ours(encode(data[:1000]))  # warm up numpy's code paths once

    # Alternate the two sides and keep each one's best round: the machine is shared, its load drifts.
    t_encode = t_ours = t_naive = float("inf")
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        ballots = encode(data)
        t_encode = min(t_encode, time.perf_counter() - t0)
        t0 = time.perf_counter()
        votes = ours(ballots)
        t_ours = min(t_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference = naive(data)
        t_naive = min(t_naive, time.perf_counter() - t0)
    assert same(results(ballots, votes), reference), "rplat's votes differ from the pure-Python loop's"

    ties = {f: int((v.tie_size > 1).sum()) for f, v in votes.items()}
    accuracy = {f: float(v.credit.mean()) for f, v in votes.items() if v.credit is not None}
    n = args.problems * args.samples
    print(f"{args.problems} problems x {args.samples} samples, 4 vote functions; the same winners, masses, tie "
          f"sizes, margins and credits on both sides; ties per vote {ties}; accuracy "
          + ", ".join(f"{f} {a:.4f}" for f, a in accuracy.items()))
    print(f"rplat asc_votes:                {n / t_ours / 1e6:8.2f} M samples/s ({t_ours:.3f} s)")
    print(f"  + encoding the lists as arrays (answer_codes, once per job): {t_encode:.3f} s; end to end "
          f"{t_naive / (t_encode + t_ours):.2f}x the loop")
    print(f"pure-Python per-problem loop:   {n / t_naive / 1e6:8.2f} M samples/s ({t_naive:.3f} s)")
    print(f"ratio aggregate: {t_naive / t_ours:.2f}")


if __name__ == "__main__":
    main()
