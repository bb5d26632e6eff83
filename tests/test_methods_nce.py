"""NCE (TDG B3): token KL, beta, the weighted KD loss and the mixed loss against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from rplat.methods.nce import beta, kd_loss, nce_loss, sequence_ce, token_kl


def logits_of(*dists: list[float]) -> torch.Tensor:
    """Logits (1, tokens, vocab) whose softmax is each given distribution."""
    return torch.tensor([[[math.log(p) for p in d] for d in dists]], dtype=torch.float32)


# Vocabulary of 3, two tokens. NEG's distributions are [.5, .25, .25] then [.2, .3, .5]; NAT's uniform then
# [.5, .25, .25].
NEG = logits_of([0.5, 0.25, 0.25], [0.2, 0.3, 0.5])
NAT = logits_of([1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25])
KL_1 = 0.5 * math.log(0.5 * 3) + 2 * 0.25 * math.log(0.25 * 3)  # 0.0588915
KL_2 = 0.2 * math.log(0.2 / 0.5) + 0.3 * math.log(0.3 / 0.25) + 0.5 * math.log(0.5 / 0.25)  # 0.2180120


def test_token_kl_is_kl_of_neg_from_nat_per_token() -> None:
    assert token_kl(NEG, NAT).tolist()[0] == pytest.approx([KL_1, KL_2], abs=1e-6)


def test_token_kl_is_not_symmetric() -> None:
    backwards = 1 / 3 * (math.log((1 / 3) / 0.5) + 2 * math.log((1 / 3) / 0.25))  # KL(uniform || [.5,.25,.25])
    assert token_kl(NAT, NEG)[0, 0].item() == pytest.approx(backwards, abs=1e-6)
    assert backwards != pytest.approx(KL_1, abs=1e-3)


def test_token_kl_divides_the_logits_by_the_temperature() -> None:
    assert token_kl(2 * NEG, 2 * NAT, temperature=2.0)[0].tolist() == pytest.approx([KL_1, KL_2],
                                                                                  abs=1e-6)


def test_token_kl_of_identical_distributions_is_zero() -> None:
    assert token_kl(NEG, NEG).abs().max().item() < 1e-7


def test_the_smoothing_of_1e_minus_7_enters_both_distributions() -> None:
    # A near-zero probability of NAT where NEG has mass: the 1e-7 floor bounds the token KL.
    neg = logits_of([0.5, 0.5, 1e-30])
    nat = torch.tensor([[[0.0, -80.0, -80.0]]])  # p_nat ~ [1, 0, 0]
    a, e = 0.5 + 1e-7, 1e-7  # p_neg = [a, a, e]; p_nat = [1 + e, e, e]
    expected = a * math.log(a / (1 + e)) + a * math.log(a / e)
    assert token_kl(neg, nat)[0, 0].item() == pytest.approx(expected, rel=1e-4)


def test_beta_is_tanh_of_the_mean_token_kl() -> None:
    kl = torch.tensor([[KL_1, KL_2]])
    assert beta(kl, torch.tensor([[1, 1]])).item() == pytest.approx(math.tanh((KL_1 + KL_2) / 2), abs=1e-7)


def test_beta_ignores_masked_positions() -> None:
    kl = torch.tensor([[KL_1, KL_2, 9.0], [KL_2, 5.0, 7.0]])
    got = beta(kl, torch.tensor([[1, 1, 0], [1, 0, 0]])).tolist()
    assert got == pytest.approx([math.tanh((KL_1 + KL_2) / 2), math.tanh(KL_2)], abs=1e-7)


def test_beta_lies_in_zero_to_one() -> None:
    torch.manual_seed(0)
    neg, nat = torch.randn(16, 5, 7) * 3, torch.randn(16, 5, 7) * 3
    b = beta(token_kl(neg, nat), torch.ones(16, 5))
    assert (b >= 0).all() and (b < 1).all() and b.max() > 0.5
    assert beta(token_kl(neg, neg), torch.ones(16, 5)).tolist() == [0.0] * 16


def test_a_fully_masked_sequence_gets_beta_zero_not_nan() -> None:
    assert beta(torch.tensor([[3.0, 4.0]]), torch.tensor([[0, 0]])).tolist() == [0.0]


def test_kd_loss_is_the_masked_cross_entropy_to_nat_times_offset_plus_beta() -> None:
    # Student uniform: -sum_v p_nat log p_stu = ln 3 at every token. Student = NEG: cross-entropies by hand.
    b = torch.tensor([0.2])
    uniform = torch.zeros(1, 2, 3)
    assert kd_loss(uniform, NAT, torch.tensor([[1, 1]]), b).item() == pytest.approx(math.log(3) * 0.7, abs=1e-6)
    ce_1 = -(1 / 3) * (math.log(0.5) + 2 * math.log(0.25))
    ce_2 = -(0.5 * math.log(0.2) + 0.25 * math.log(0.3) + 0.25 * math.log(0.5))
    both = kd_loss(NEG, NAT, torch.tensor([[1, 1]]), b, temperature=1.0, beta_offset=0.5).item()
    assert both == pytest.approx((ce_1 + ce_2) / 2 * 0.7, abs=1e-6)
    first_only = kd_loss(NEG, NAT, torch.tensor([[1, 0]]), b, beta_offset=0.0).item()
    assert first_only == pytest.approx(ce_1 * 0.2, abs=1e-6)


def test_kd_loss_is_scaled_by_the_squared_temperature() -> None:
    # At T = 2 on doubled logits the distributions are the same, so the loss is exactly 4 times as large.
    b, mask = torch.tensor([0.3]), torch.tensor([[1, 1]])
    assert kd_loss(2 * NEG, 2 * NAT, mask, b, temperature=2.0).item() == pytest.approx(
        4 * kd_loss(NEG, NAT, mask, b).item(), rel=1e-6)


def test_kd_loss_gives_one_value_per_sequence_with_its_own_beta() -> None:
    student, nat = torch.zeros(2, 2, 3), torch.cat([NAT, NAT])
    got = kd_loss(student, nat, torch.ones(2, 2), torch.tensor([0.0, 0.5]), beta_offset=0.5).tolist()
    assert got == pytest.approx([math.log(3) * 0.5, math.log(3) * 1.0], abs=1e-6)


def test_kd_gradient_reaches_the_student_only() -> None:
    student, nat = torch.zeros(1, 2, 3, requires_grad=True), NAT.clone().requires_grad_(True)
    kd_loss(student, nat, torch.ones(1, 2), torch.tensor([0.1])).sum().backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert nat.grad is None


def test_sequence_ce_is_the_mean_next_token_loss_over_labelled_tokens() -> None:
    logits = logits_of([0.5, 0.25, 0.25], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8])
    labels = torch.tensor([[-100, 2, 1]])  # targets after the shift: token 2 from position 0, token 1 from 1
    assert sequence_ce(logits, labels).item() == pytest.approx(-(math.log(0.25) + math.log(0.3)) / 2, abs=1e-6)
    assert sequence_ce(logits, torch.tensor([[-100, -100, 1]])).item() == pytest.approx(-math.log(0.3), abs=1e-6)


def test_nce_loss_mixes_ce_and_kd_by_alpha() -> None:
    ce, kd = torch.tensor([2.0, 1.0]), torch.tensor([4.0, 3.0])
    assert nce_loss(ce, kd, 0.5).tolist() == [3.0, 2.0]
    assert nce_loss(ce, kd, 0.25).tolist() == [2.5, 1.5]
    assert nce_loss(ce, kd, 0.0).tolist() == [2.0, 1.0]
    assert nce_loss(ce, kd, 1.0).tolist() == [4.0, 3.0]
