"""The ASC ranker's pure parts (TDG B4): head, chain-only pooling, pair loss, inputs, saving."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

from rplat.llm.formats import detect_format, get_format
from rplat.methods.ranker import (
    Ranker,
    RankerConfig,
    RankerHead,
    collate,
    draw_pair,
    encode_pair,
    heldout_questions,
    load_ranker,
    pair_loss,
    save_ranker,
)

from tiny_lm import tiny_model, tiny_tokenizer


def test_head_is_two_residual_elu_layers_then_a_sigmoid_score() -> None:
    head = RankerHead(2)
    with torch.no_grad():
        head.dense1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
        head.dense1.bias.copy_(torch.tensor([0.0, 0.5]))
        head.dense2.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        head.dense2.bias.copy_(torch.tensor([-3.0, 0.0]))
        head.score.weight.copy_(torch.tensor([[0.5, -1.0]]))
        head.score.bias.copy_(torch.tensor([0.25]))
    h = (1.0, 1.0)
    elu = lambda x: x if x > 0 else math.exp(x) - 1  # noqa: E731
    # o1 = ELU(D1 h + b1) + h = (ELU(1) + 1, ELU(-1.5) + 1); o2 = ELU(D2 o1 + b2) + o1; s = sigmoid(w . o2 + b)
    o1 = (elu(1.0) + h[0], elu(-2.0 + 0.5) + h[1])
    o2 = (elu(o1[1] - 3.0) + o1[0], elu(o1[0]) + o1[1])
    expected = 1 / (1 + math.exp(-(0.5 * o2[0] - 1.0 * o2[1] + 0.25)))
    assert head(torch.tensor([h])).item() == pytest.approx(expected, rel=1e-6)


class PositionWise(nn.Module):
    """An encoder without attention: each token's hidden state is its embedding, so only pooling mixes tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.embed(input_ids))


def test_the_pooling_mask_not_the_question_tokens_decides_the_score() -> None:
    torch.manual_seed(0)
    ranker = Ranker(PositionWise(), 8).eval()
    chain = [7, 8, 9]
    mask = torch.tensor([[0, 0, 0, 1, 1, 1]])
    attention = torch.ones_like(mask)
    with torch.no_grad():
        first = ranker(torch.tensor([[1, 2, 3, *chain]]), attention, mask)
        other_question = ranker(torch.tensor([[40, 41, 42, *chain]]), attention, mask)
        question_pooled = ranker(torch.tensor([[40, 41, 42, *chain]]), attention, torch.ones_like(mask))
    assert other_question.item() == pytest.approx(first.item(), abs=1e-7)
    assert abs(question_pooled.item() - first.item()) > 1e-4


def test_pair_loss_with_p_3_is_the_cubed_errors_of_both_scores() -> None:
    loss = pair_loss(torch.tensor([0.8, 1.0]), torch.tensor([0.3, 0.0]), 3.0)
    assert loss.tolist() == pytest.approx([0.2**3 + 0.3**3, 0.0])


@pytest.mark.parametrize("tokenizer", ["tiny", "minilm"])
def test_the_chain_mask_covers_exactly_the_chain_tokens(tokenizer: str) -> None:
    tok = tiny_tokenizer() if tokenizer == "tiny" else _minilm_tokenizer()
    question, chain = "Compute 12 * 3.", "12 * 3 = 36, so the answer is 36."
    enc = encode_pair(tok, question, chain, 200)
    chain_ids = tok(chain, add_special_tokens=False)["input_ids"]
    assert [i for i, m in zip(enc.input_ids, enc.chain_mask, strict=True) if m] == chain_ids
    assert not enc.truncated
    cut = encode_pair(tok, question, chain, 8)
    assert len(cut.input_ids) == 8 and cut.truncated and sum(cut.chain_mask) > 0


def _minilm_tokenizer() -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    from rplat.registry import bundled_embedder_path

    return AutoTokenizer.from_pretrained(str(bundled_embedder_path()), local_files_only=True)


def test_pairs_are_a_function_of_seed_epoch_and_question_and_the_heldout_split_is_seeded() -> None:
    pos, neg = [11, 12, 13, 14], [21, 22, 23, 24]
    assert draw_pair(pos, neg, seed=0, epoch=1, problem_id=5) == draw_pair(pos[::-1], neg, seed=0, epoch=1,
                                                                           problem_id=5)
    drawn = {draw_pair(pos, neg, seed=0, epoch=e, problem_id=5) for e in range(8)}
    assert len(drawn) > 1 and all(a in pos and b in neg for a, b in drawn)
    held = heldout_questions(list(range(10)), 0.2, seed=3)
    assert len(held) == 2 and held == heldout_questions(list(range(10))[::-1], 0.2, seed=3)
    assert heldout_questions([1, 2], 0.9, seed=0) != {1, 2} and heldout_questions([1, 2, 3], 0.0, seed=0) == set()


def test_a_saved_ranker_is_detected_checked_and_reloads_with_the_same_scores(tmp_path: Path) -> None:
    tok = tiny_tokenizer()
    ranker = Ranker(tiny_model().model, 32).eval()
    cfg = RankerConfig("base", 32, 64)
    save_ranker(ranker, tok, tmp_path / "r", cfg)
    assert detect_format(tmp_path / "r") == "ranker"
    get_format("ranker").check(tmp_path / "r")
    loaded, loaded_tok, loaded_cfg = load_ranker(tmp_path / "r")
    batch = collate([encode_pair(tok, "Compute 2 + 3.", c, cfg.max_length) for c in ("2 + 3 = 5", "six")],
                    tok.pad_token_id)
    with torch.no_grad():
        before = ranker(batch["input_ids"], batch["attention_mask"], batch["chain_mask"])
        after = loaded(batch["input_ids"], batch["attention_mask"], batch["chain_mask"])
    assert loaded_cfg == cfg and len(loaded_tok) == len(tok)
    assert after.tolist() == pytest.approx(before.tolist(), abs=1e-6)
    assert not list((tmp_path / "r").rglob("*.bin")) and not list((tmp_path / "r").rglob("*.pt"))
