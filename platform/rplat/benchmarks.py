"""Offline benchmark generators: reasoning-gym datasets as JSONL with their worked solutions."""

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
