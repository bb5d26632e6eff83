"""RATIONALYST A6, the pure parts of guided solving: chat prompts, candidate scores, the choice.

The agent writes one step (one line) per assistant turn. Implicit supervision scores each candidate by its
mean token log-prob under the scorer after an assistant turn "Rationale: r"; explicit supervision picks the
candidate whose own generated rationale is most likely and puts that rationale into the agent's context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

from rplat.llm import Message

# The solving methods, named as in the papers' tables: `sc` is self-consistency (n sampled trajectories,
# majority vote). Every list of methods (job params, pipelines, the CLI) derives from these two.
Baseline = Literal["greedy", "sc", "random-candidate"]
Guided = Literal["rationalyst-implicit", "rationalyst-explicit"]
SolveMethod = Literal[Baseline, Guided]
BASELINES: tuple[str, ...] = get_args(Baseline)
GUIDED: tuple[str, ...] = get_args(Guided)
SOLVE_METHODS = BASELINES + GUIDED

READY = "We are ready to output the final answer"


def solution_steps(solution: str) -> list[str]:
    """A worked solution's steps: its non-empty lines, with GSM8K's `#### N` written as "The answer is: N"."""
    steps = []
    for line in solution.splitlines():
        line = line.strip()
        if line:
            steps.append(line.replace("####", "The answer is:").replace("The answer is:  ", "The answer is: "))
    return steps


def fewshot_messages(examples: Sequence[tuple[str, str]]) -> list[Message]:
    """Demonstrations as multi-turn chat: the question as the user turn, one assistant turn per step."""
    messages: list[Message] = []
    for question, solution in examples:
        messages.append({"role": "user", "content": question})
        messages += [{"role": "assistant", "content": step} for step in solution_steps(solution)]
    return messages


def agent_messages(system: str, fewshot: Sequence[Message], question: str, steps: Sequence[str],
                   rationales: Sequence[str | None] = ()) -> list[Message]:
    """The agent's context: system, demonstrations, the question, then the steps so far. With explicit
    supervision each chosen step is preceded by its rationale (unless it is the "ready" rationale)."""
    messages: list[Message] = [{"role": "system", "content": system}, *fewshot, {"role": "user", "content": question}]
    for k, step in enumerate(steps):
        rationale = rationales[k] if k < len(rationales) else None
        if rationale and rationale.strip() != READY:
            messages.append({"role": "assistant", "content": f"Rationale: {rationale}"})
        messages.append({"role": "assistant", "content": step})
    return messages


def trajectory_text(question: str, steps: Sequence[str]) -> str:
    """The text RATIONALYST reads: `Question: q\\nAnswer:` followed by the steps so far."""
    return f"Question: {question}\nAnswer:" + "".join(f" {s}" for s in steps)


def scorer_messages(system: str, fewshot: Sequence[Message], question: str, steps: Sequence[str],
                    rationale: str) -> list[Message]:
    """The implicit scorer's context: its own system message, the demonstrations and trajectory (without the
    agent's system message), then the assistant turn "Rationale: r"; the candidate is scored after it."""
    return [{"role": "system", "content": system}, *fewshot, {"role": "user", "content": question},
            *({"role": "assistant", "content": s} for s in steps),
            {"role": "assistant", "content": f"Rationale: {rationale}"}]


def mean_logprob(logprobs: Sequence[float]) -> float:
    """The implicit score: the plain mean token log-prob (the newest reference script); -inf for no tokens."""
    return sum(logprobs) / len(logprobs) if logprobs else float("-inf")


def choose(scores: Sequence[float]) -> int:
    """Index of the best candidate; the first among equals."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
