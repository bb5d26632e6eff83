"""NCE (TDG B3): token KL, beta, the weighted KD loss and the mixed loss against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

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


def test_token_kl_of_identical_distributions_is_the_smoothing_mass_only() -> None:
    # With the 1e-7 on the target only, KL_t = sum_v (p + e) log((p + e) / p): small but positive.
    expected = [sum((p + 1e-7) * math.log((p + 1e-7) / p) for p in d) for d in ([0.5, 0.25, 0.25], [0.2, 0.3, 0.5])]
    got = token_kl(NEG.double(), NEG.double())[0].tolist()
    assert got == pytest.approx(expected, rel=1e-6) and min(got) > 0


def test_the_1e_minus_7_goes_on_the_neg_target_and_not_inside_the_log_of_nat() -> None:
    # NAT all but rules out two tokens (p_nat ~ e^-80) where NEG puts half its mass on each. The authors' KL
    # takes log p_nat exactly, so those tokens count in full (about 0.5 * 80 each); a 1e-7 inside the log of
    # p_nat would have capped them at about 0.5 * ln(0.5 / 1e-7) = 7.7.
    neg = logits_of([0.5, 0.5, 1e-30]).double()
    nat = torch.tensor([[[0.0, -80.0, -80.0]]], dtype=torch.float64)
    a, e = 0.5 + 1e-7, 1e-7 + 1e-30  # q_neg = [a, a, e]
    log_nat = [-math.log1p(2 * math.exp(-80.0)), -80.0 - math.log1p(2 * math.exp(-80.0))]
    expected = a * (math.log(a) - log_nat[0]) + a * (math.log(a) - log_nat[1]) + e * (math.log(e) - log_nat[1])
    assert token_kl(neg, nat)[0, 0].item() == pytest.approx(expected, rel=1e-12)
    assert expected > 39.0


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
    same = beta(token_kl(neg, neg), torch.ones(16, 5))
    assert (same > 0).all() and (same < 1e-4).all()  # only the 1e-7 on the target: a tiny positive KL


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


# --- against the authors' expressions ---------------------------------------------------------------------------
# A literal transcription of the NCE loss in the authors' distill_NCE.py (Distill.forward), for one batch: `pos` are
# the NAT model's logits in mode mix, `neg` in mode neg, `stu` the student's, `mask` the attention mask.


def authors_beta(pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor, T: float) -> torch.Tensor:
    pos_log_outputs = F.log_softmax(pos / T, dim=-1)
    neg_outputs = F.softmax(neg / T, dim=-1) + 10 ** (-7)
    return torch.tanh((F.kl_div(pos_log_outputs, neg_outputs, reduction='none') * mask.unsqueeze(-1)).sum(-1).sum(-1)
                      / mask.sum(-1))


def authors_kd(stu: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, beta: torch.Tensor, T: float) -> torch.Tensor:
    pred = F.log_softmax(stu / T, dim=-1)
    pos_outputs = F.softmax(pos / T, dim=-1) + 10 ** (-7)
    loss_kd = - T * T * pred * pos_outputs * (0.5 + beta.unsqueeze(-1).unsqueeze(-1))
    return (loss_kd * mask.unsqueeze(-1)).sum() / mask.sum()


def authors_ce(stu: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The HF causal-LM loss the authors take from the student's outputs."""
    return F.cross_entropy(stu[..., :-1, :].reshape(-1, stu.shape[-1]), labels[..., 1:].reshape(-1), ignore_index=-100)


def authors_loss(stu: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                 T: float, alpha: float = 0.5) -> torch.Tensor:
    beta = authors_beta(pos, neg, mask, T)
    return (1 - alpha) * authors_ce(stu, labels) + alpha * authors_kd(stu, pos, mask, beta, T)


SHAPES = [(1, 1, 3), (2, 5, 7), (3, 6, 50), (2, 4, 32000)]


def lm_like(shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, ...]:
    """float64 logits (student, mix, neg) with a language model's spread (at V = 32000 most probabilities are
    below 1e-7), neg and mix close to each other, and a mask padding sequences on the left and on the right."""
    g = torch.Generator().manual_seed(seed)
    b, n, v = shape
    mix = torch.randn(shape, generator=g, dtype=torch.float64) * 4.0
    neg = mix + torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
    stu = mix + torch.randn(shape, generator=g, dtype=torch.float64) * 2.0
    mask = torch.ones(b, n, dtype=torch.long)
    for i in range(1, b):  # sequence 0 unpadded, then padding on alternating sides
        pad = min(i, n - 1)
        if i % 2:
            mask[i, :pad] = 0
        else:
            mask[i, n - pad:] = 0
    return stu, mix, neg, mask


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_beta_is_the_authors_beta(shape: tuple[int, int, int], temperature: float) -> None:
    _, mix, neg, mask = lm_like(shape, seed=shape[2])
    got = beta(token_kl(neg, mix, temperature), mask)
    assert got.dtype == torch.float64
    assert torch.allclose(got, authors_beta(mix, neg, mask, temperature), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_token_kl_is_kl_div_of_log_nat_against_neg_plus_1e_minus_7(shape: tuple[int, int, int],
                                                                   temperature: float) -> None:
    # F.kl_div(input, target) is target * (log target - input), written out here without F.kl_div.
    _, mix, neg, _ = lm_like(shape, seed=shape[2] + 1)
    q = torch.softmax(neg / temperature, dim=-1) + 1e-7
    expected = (q * (q.log() - torch.log_softmax(mix / temperature, dim=-1))).sum(-1)
    assert torch.allclose(token_kl(neg, mix, temperature), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
@pytest.mark.parametrize("beta_offset", [0.5, 0.2])
def test_kd_loss_per_sequence_is_the_authors_kd_at_micro_batch_1(shape: tuple[int, int, int], temperature: float,
                                                                 beta_offset: float) -> None:
    stu, mix, neg, mask = lm_like(shape, seed=shape[2] + 2)
    b = beta(token_kl(neg, mix, temperature), mask)
    got = kd_loss(stu, mix, mask, b, temperature, beta_offset)
    # The authors' offset is the literal 0.5: another offset is the same as beta shifted by (beta_offset - 0.5).
    shifted = b + (beta_offset - 0.5)
    expected = torch.stack([authors_kd(stu[i:i + 1], mix[i:i + 1], mask[i:i + 1], shifted[i:i + 1], temperature)
                            for i in range(shape[0])])
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-14)
    # Over a whole batch the authors take the mean over all its tokens: the per-sequence values weighted by length.
    lengths = mask.sum(-1).to(got.dtype)
    assert (got * lengths).sum() / lengths.sum() == pytest.approx(
        authors_kd(stu, mix, mask, shifted, temperature).item(), rel=1e-12)


@pytest.mark.parametrize("shape", [s for s in SHAPES if s[1] > 1])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_the_nce_loss_is_the_authors_loss_at_micro_batch_1(shape: tuple[int, int, int], temperature: float) -> None:
    stu, mix, neg, mask = lm_like(shape, seed=shape[2] + 3)
    g = torch.Generator().manual_seed(shape[2])
    labels = torch.randint(0, shape[2], mask.shape, generator=g).masked_fill(mask == 0, -100)
    ours = nce_loss(sequence_ce(stu, labels), kd_loss(stu, mix, mask, beta(token_kl(neg, mix, temperature), mask),
                                                     temperature, 0.5), 0.5)
    expected = [authors_loss(stu[i:i + 1], mix[i:i + 1], neg[i:i + 1], mask[i:i + 1], labels[i:i + 1],
                             temperature).item() for i in range(shape[0])]
    assert ours.tolist() == pytest.approx(expected, rel=1e-12)
