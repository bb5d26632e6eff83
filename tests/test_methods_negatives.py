"""NT and UL losses (TDG B5) against hand-computed values, their gradients' signs included."""

from __future__ import annotations

import math

import pytest
import torch

from rplat.methods.negatives import log1m_exp, mle_and_unlikelihood, unlikelihood, weighted_nll

LN_HALF = -0.6931471805599453  # log 0.5
LN_QUARTER = -1.3862943611198906  # log 0.25


def lp(*probs: float) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float64))


def test_weighted_nll_sums_each_rows_masked_nll_times_its_weight() -> None:
    # Row 0, a positive (w = +1): p = 0.5, 0.25 -> NLL 0.693147 + 1.386294 = 2.079442.
    # Row 1, a negative (w = -0.05): p = 0.5 and a masked pad -> NLL 0.693147, weighted -0.034657.
    logprobs = torch.stack([lp(0.5, 0.25), lp(0.5, 0.9)])
    mask = torch.tensor([[1, 1], [1, 0]])
    got = weighted_nll(logprobs, mask, torch.tensor([1.0, -0.05], dtype=torch.float64))
    assert got.item() == pytest.approx(2.079442 - 0.034657, abs=1e-6)
    assert got.item() == pytest.approx(-(LN_HALF + LN_QUARTER) + 0.05 * LN_HALF, abs=1e-12)


def test_weighted_nll_with_unit_weights_is_the_summed_token_nll() -> None:
    logprobs = torch.stack([lp(0.5, 0.25), lp(0.25, 0.5)])
    assert weighted_nll(logprobs, torch.ones(2, 2), torch.ones(2)).item() == pytest.approx(2 * 2.0794415, abs=1e-6)


def test_nt_gradient_on_a_negative_has_the_opposite_sign_of_mle() -> None:
    logprobs = torch.stack([lp(0.5, 0.25), lp(0.5, 0.25)]).requires_grad_()
    weighted_nll(logprobs, torch.ones(2, 2), torch.tensor([1.0, -0.05], dtype=torch.float64)).backward()
    assert logprobs.grad is not None
    # d/d log p: -1 for the positive (descent raises its likelihood), +0.05 for the negative (descent lowers it).
    assert logprobs.grad.tolist() == [[-1.0, -1.0], [0.05, 0.05]]


def test_nt_through_the_softmax_lowers_a_negatives_target_logit() -> None:
    # Two-word vocabulary, logits (0, 0): p(target) = 0.5; d(-w log p)/d z_target = -w (1 - p) = -0.5 w.
    logits = torch.zeros(2, 1, 2, dtype=torch.float64, requires_grad=True)
    target_lp = torch.log_softmax(logits, dim=-1)[..., 0]
    weighted_nll(target_lp, torch.ones(2, 1), torch.tensor([1.0, -0.05], dtype=torch.float64)).backward()
    assert logits.grad is not None
    assert logits.grad[0, 0].tolist() == pytest.approx([-0.5, 0.5])  # MLE: the target logit goes up
    assert logits.grad[1, 0].tolist() == pytest.approx([0.025, -0.025])  # NT negative: it goes down


def test_weighted_nll_needs_one_weight_per_row() -> None:
    with pytest.raises(ValueError, match="one weight per row"):
        weighted_nll(torch.zeros(2, 3), torch.ones(2, 3), torch.ones(3))


def test_unlikelihood_is_minus_log_one_minus_p_summed_over_masked_tokens() -> None:
    # p = 0.5 -> -log 0.5 = 0.693147; p = 0.75 -> -log 0.25 = 1.386294; p = 0.1 -> -log 0.9 = 0.105361; the
    # fourth token (p = 0.3) is masked.
    logprobs = torch.stack([lp(0.5, 0.75), lp(0.1, 0.3)])
    got = unlikelihood(logprobs, torch.tensor([[1, 1], [1, 0]]))
    assert got.item() == pytest.approx(0.693147 + 1.386294 + 0.105361, abs=1e-6)


def test_unlikelihood_of_a_certain_token_is_clamped_finite() -> None:
    # p = 1 is clamped to 1 - 1e-5: -log(1e-5) = 11.512925, and the gradient stays finite.
    logprobs = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
    got = unlikelihood(logprobs, torch.ones(1, 1))
    got.backward()
    assert got.item() == pytest.approx(11.512925, abs=1e-5)
    assert logprobs.grad is not None and torch.isfinite(logprobs.grad).all()


def test_log1m_exp_is_precise_near_zero_and_far_below_it() -> None:
    tiny = torch.tensor([-1e-3, -50.0], dtype=torch.float64)
    # log(1 - e^-0.001) = log(0.00099950017) = -6.908255; log(1 - e^-50) = -e^-50 = -1.9287e-22.
    got = log1m_exp(tiny)
    assert got[0].item() == pytest.approx(math.log(-math.expm1(-1e-3)), rel=1e-12)
    assert got[0].item() == pytest.approx(-6.908255, abs=1e-6)
    assert got[1].item() == pytest.approx(-1.9287498479639178e-22, rel=1e-9)


def test_unlikelihood_gradient_lowers_the_likelihood() -> None:
    logprobs = lp(0.5, 0.75).unsqueeze(0).requires_grad_()
    unlikelihood(logprobs, torch.ones(1, 2)).backward()
    assert logprobs.grad is not None
    # d(-log(1 - e^l))/dl = p / (1 - p): 1 at p = 0.5, 3 at p = 0.75; positive, the opposite sign of MLE's -1.
    assert logprobs.grad.flatten().tolist() == pytest.approx([1.0, 3.0])


def test_mle_and_unlikelihood_puts_mle_on_positives_and_lambda_ul_on_negatives() -> None:
    # Positive row p = 0.5, 0.25: MLE 2.079442. Negative row p = 0.5, 0.1: UL 0.693147 + 0.105361 = 0.798508,
    # times 0.05 = 0.039925. A negative third row is all padding and adds nothing.
    logprobs = torch.stack([lp(0.5, 0.25), lp(0.5, 0.1), lp(0.9, 0.9)]).requires_grad_()
    mask = torch.tensor([[1, 1], [1, 1], [0, 0]])
    loss, parts = mle_and_unlikelihood(logprobs, mask, torch.tensor([False, True, True]), 0.05)
    assert loss.item() == pytest.approx(2.079442 + 0.039925, abs=1e-6)
    assert parts == pytest.approx({"mle": 2.079442, "ul": 0.798508}, abs=1e-6)
    loss.backward()
    assert logprobs.grad is not None
    # MLE rows: -1 per token; UL rows: 0.05 * p / (1 - p) = 0.05 and 0.05 / 9; padding: 0.
    assert logprobs.grad.flatten().tolist() == pytest.approx([-1.0, -1.0, 0.05, 0.05 / 9, 0.0, 0.0])


def test_mle_and_unlikelihood_with_lambda_zero_is_mle_on_the_positives_alone() -> None:
    logprobs = torch.stack([lp(0.5, 0.25), lp(0.5, 0.1)])
    loss, _ = mle_and_unlikelihood(logprobs, torch.ones(2, 2), torch.tensor([False, True]), 0.0)
    assert loss.item() == pytest.approx(-(LN_HALF + LN_QUARTER), abs=1e-12)
