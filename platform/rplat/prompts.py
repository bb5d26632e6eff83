"""Prompt templates of both papers as content-hashed rows: each job points at its exact prompt.

System prompts are verbatim from the reference code (docs/rationalyst.md, A2, A4, A6; typos included, since
they are what the papers' models saw). The few-shot demonstrations are rplat's own, written in the
reference's format: the user turn is the raw text, the assistant turn the same text with rationales
inserted between sentences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from rplat.hashing import content_hash
from rplat.models import PromptTemplate

EXTRACT_PILE_SYSTEM = (
    "Your task is to add rationales given to a piece of text. The rationales should be added after each sentence. "
    "The rationales should help you with predicting future text and should not contain the information of "
    "preceeding context. You can add rationales by enclosing it with <BOT> and <EOT>. Other than the rationales, "
    "please do not modify the original text."
)
EXTRACT_REASONING_SYSTEM = (
    "Your task is to add rationales given to a piece of text. The rationals should help you with predicting future "
    "text and not repeating previous generations. You can add rationals by writing <BOT>rational<EOT>. Each <BOT> "
    "should pair with one <EOT>. These rationales should represent the hidden rationales unstated in the original "
    "text that facilitate the reasoning. Other than the additional rationales, please do not modify the original "
    "text!"
)
EXTRACT_INSERT_SYSTEM = (
    "Your task is to write the implicit rationale between two pieces of text: one short sentence, unstated in the "
    "text, that helps predict the next text from the text so far. Do not repeat the text. Reply with the rationale "
    "only."
)
SCORE_SYSTEM = "Your task is to generate future text given preceeding text"
IMPLICIT_SCORER_SYSTEM = (
    "Your task is to generate future text given preceeding text and rationale that guide future reasoning. The "
    "rationales start with the word 'Rationale: '. Please generate text that is consistent with the rationales and "
    "preceeding text."
)
GSM8K_AGENT_SYSTEM = (
    "You are a smart assistant that solves math word problems. You will only generate one sentence that extends "
    "the reasoning trajectory that solves the question given the question and partial answer reasoning "
    "trajectory. Please don't repeat your previous generation while you're generating the sentence. If you think "
    "you're ready to output the answer, you can finish the response with The answer is:"
)

EXTRACT_FEWSHOT = [
    (
        "Question: Lena buys 3 notebooks at $4 each and a pen for $2. How much does she spend?\n"
        "Answer: The notebooks cost 3 * 4 = $12.\nWith the pen she spends 12 + 2 = $14.\n#### 14",
        "Question: Lena buys 3 notebooks at $4 each and a pen for $2. How much does she spend?\n"
        "Answer: <BOT>First find the cost of the notebooks by multiplying quantity by price<EOT>The notebooks cost "
        "3 * 4 = $12.\n<BOT>Then add the price of the pen to get the total<EOT>With the pen she spends 12 + 2 = $14."
        "\n<BOT>We are ready to output the final answer<EOT>#### 14",
    ),
    (
        "The river floods every spring. Farmers plant after the water recedes. The soil is rich from the silt.",
        "The river floods every spring. <BOT>The floods shape when farming can happen<EOT>Farmers plant after the "
        "water recedes. <BOT>Explain why planting after floods is worthwhile<EOT>The soil is rich from the silt.",
    ),
]

INSERT_FEWSHOT = [
    (
        "Text so far:\nQuestion: Lena buys 3 notebooks at $4 each and a pen for $2. How much does she spend?\n\n"
        "Next text:\nAnswer: The notebooks cost 3 * 4 = $12.",
        "First find the cost of the notebooks by multiplying quantity by price.",
    ),
    (
        "Text so far:\nThe river floods every spring.\n\nNext text:\nFarmers plant after the water recedes.",
        "The floods decide when farming can happen.",
    ),
]


def insert_prompt(preceding: str, following: str) -> str:
    """The user turn of insert-mode extraction: the text so far and the next unit."""
    return f"Text so far:\n{preceding}\n\nNext text:\n{following}"


# --- Turning Dust into Gold (B1, B2): plain-text completion, no chat template ---------------------------------

# The teacher's and the student's prompt: "Problem:\n{q}\nSolution:" (after k demonstrations for a teacher);
# a training text is the same with the chain after "Solution:\n". The released files keep both prefixes in
# their fields; rplat stores the bare problem and chain and puts the prefixes back here.
TDG_CHAIN_FORMAT = "Problem:\n{question}\nSolution:\n{chain}"
TDG_PROBLEM_PREFIX = "Problem:\n"
TDG_SOLUTION_PREFIX = "Solution:\n"


def tdg_prompt(question: str, demonstrations: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()) -> str:
    """The completion prompt for one problem, after (question, solution) demonstrations separated by blank lines."""
    shots = "".join(tdg_training_text(q, s) + "\n\n" for q, s in demonstrations)
    return f"{shots}Problem:\n{question}\nSolution:"


def tdg_training_text(question: str, chain: str) -> str:
    """`"Problem:\n{problem}" + "\n" + "Solution:\n{chain}"`, the text TDG trains on (loss on all of it)."""
    return TDG_CHAIN_FORMAT.format(question=question, chain=chain)


def strip_prefix(text: str, prefix: str) -> str:
    """`text` without a leading `prefix` (the released files' "Problem:\n" / "Solution:\n")."""
    return text[len(prefix):] if text.startswith(prefix) else text


@dataclass(frozen=True)
class Template:
    """A named, versioned prompt: a system message and few-shot (user, assistant) pairs."""

    name: str
    version: str
    system: str
    fewshot: tuple[tuple[str, str], ...] = field(default=())

    def body(self) -> dict[str, Any]:
        return {"system": self.system, "fewshot": [list(p) for p in self.fewshot]}

    def messages(self, user: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}]
        for u, a in self.fewshot:
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        return [*msgs, {"role": "user", "content": user}]


TEMPLATES = {
    t.name: t
    for t in (
        Template("extract-pile", "1", EXTRACT_PILE_SYSTEM, tuple(EXTRACT_FEWSHOT)),
        Template("extract-reasoning", "1", EXTRACT_REASONING_SYSTEM, tuple(EXTRACT_FEWSHOT)),
        Template("extract-insert", "1", EXTRACT_INSERT_SYSTEM, tuple(INSERT_FEWSHOT)),
        Template("score-future", "1", SCORE_SYSTEM),
        Template("implicit-scorer", "1", IMPLICIT_SCORER_SYSTEM),
        Template("agent-gsm8k", "1", GSM8K_AGENT_SYSTEM),
        Template("tdg-chain", "1", TDG_CHAIN_FORMAT),
    )
}


def ensure_template(session: Session, template: Template) -> int:
    """The row id of this exact template, inserting it on first use (content-hashed: stored once)."""
    digest = content_hash(template.name, template.version, template.body())
    found = session.scalar(select(PromptTemplate.id).where(PromptTemplate.content_hash == digest))
    if found is not None:
        return found
    row = PromptTemplate(name=template.name, version=template.version, body=template.body(), content_hash=digest)
    session.add(row)
    session.flush()
    return row.id
