"""Offline benchmark generators: reasoning-gym datasets and two-term sums as JSONL with worked solutions."""

from __future__ import annotations

import json
from pathlib import Path

from rplat.errors import UserError


def write_reasoning_gym(name: str, size: int, seed: int, out: Path) -> int:
    """Write `size` problems of reasoning-gym dataset `name` as {id, question, solution, answer, subject} lines."""
    import reasoning_gym

    try:
        dataset = reasoning_gym.create_dataset(name, size=size, seed=seed)
    except (KeyError, ValueError) as exc:
        raise UserError(f"reasoning-gym has no dataset {name!r} ({exc}); try gsm_symbolic.") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for i, item in enumerate(dataset):
            meta = item.get("metadata", {})
            fh.write(json.dumps({
                "id": f"{name}-{seed}-{i}",
                "question": item["question"],
                "solution": meta.get("answer_cot"),
                "answer": str(item["answer"]),
                "subject": meta.get("source_dataset", name),
            }, ensure_ascii=False) + "\n")
    return size


def _carries(a: int, b: int) -> bool:
    while a or b:
        if a % 10 + b % 10 >= 10:
            return True
        a, b = a // 10, b // 10
    return False


def write_sums(size: int, seed: int, out: Path, digits: int = 1) -> int:
    """Write `size` distinct two-term sums a + b (operands of 1..`digits` digits, drawn without replacement by
    `seed`) as {id, question, solution, answer, subject} lines; subject says whether the sum carries.

    Small models get some of these right (SmolLM2-135M: ~8% of one-digit sums at temperature 0.7), so a teacher's
    chains include positives; the worked solution ends in \\boxed{}, as the TDG labelers read it.
    """
    import random

    if not 1 <= digits <= 6:
        raise UserError(f"--digits {digits} is out of range; give 1 to 6 digits per operand.")
    top = 10 ** digits - 1
    total = top * top
    if size > total:
        raise UserError(f"--size {size} exceeds the {total} distinct sums of {digits}-digit operands; ask for fewer "
                        "or raise --digits.")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for k in random.Random(seed).sample(range(total), size):
            a, b = k // top + 1, k % top + 1
            c = a + b
            fh.write(json.dumps({
                "id": f"sum-{a}-{b}",
                "question": f"What is {a} + {b}?",
                "solution": f"We add the two numbers: {a} + {b} = {c}. The answer is $\\boxed{{{c}}}$.",
                "answer": str(c),
                "subject": "carry" if _carries(a, b) else "no-carry",
            }) + "\n")
    return size
