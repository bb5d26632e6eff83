"""TDG B3, Negative Calibrated Enhancement: the per-chain KD weight beta and the NCE loss.

The frozen NAT model is run in mode neg (z_neg) and mix (z_nat) on a chain; with p = softmax(z / T) + 1e-7 (the
code's smoothing), KL_t = sum_v p_neg (log p_neg - log p_nat) per token and beta = tanh(masked mean of KL_t), one
value per sequence in [0, 1). The student learns L = (1 - alpha) CE + alpha KD with
KD = -T^2 sum_t m_t sum_v p_nat log p_stu (beta_offset + beta) / sum_t m_t (the code's offset 0.5, alpha 0.5).
Every function works on whole batches: logits (B, L, V), masks (B, L), one value per sequence (B,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-7


def token_kl(logits_neg: torch.Tensor, logits_nat: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_neg || p_nat) at every position, shape (B, L), with the code's +1e-7 on both distributions."""
    p_neg = F.softmax(logits_neg.float() / temperature, dim=-1) + EPS
    p_nat = F.softmax(logits_nat.float() / temperature, dim=-1) + EPS
    return (p_neg * (p_neg.log() - p_nat.log())).sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where `mask` is 1, per sequence; a sequence with no such position gives 0."""
    m = mask.to(values.dtype)
    return (values * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def beta(kl_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tanh of the masked mean token KL, per sequence. Both distributions carry the same smoothing mass, so the
    KL is >= 0 but for rounding; the clamp keeps beta in [0, 1) when rounding gives a tiny negative mean."""
    return torch.tanh(masked_mean(kl_t, mask).clamp_min(0.0))


def kd_loss(student_logits: torch.Tensor, nat_logits: torch.Tensor, mask: torch.Tensor, beta: torch.Tensor,
            temperature: float = 1.0, beta_offset: float = 0.5) -> torch.Tensor:
    """-T^2 * masked mean over tokens of sum_v p_nat log p_stu, times (beta_offset + beta), per sequence (B,).

    The teacher side carries no gradient: `nat_logits` come from the frozen NAT model and are detached here."""
    p_nat = F.softmax(nat_logits.detach().float() / temperature, dim=-1)
    log_p_stu = F.log_softmax(student_logits.float() / temperature, dim=-1)
    cross = -(p_nat * log_p_stu).sum(-1)
    return temperature ** 2 * masked_mean(cross, mask) * (beta_offset + beta.to(cross.dtype))


def sequence_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HF's causal-LM loss per sequence (B,): mean cross-entropy of the next-token predictions over the labels
    that are not -100 (0 for a sequence without any)."""
    targets = labels[:, 1:]
    losses = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return masked_mean(losses, targets != -100)


def nce_loss(ce: torch.Tensor, kd: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """L = (1 - alpha) CE + alpha KD (elementwise: per sequence when given per-sequence values)."""
    return (1.0 - alpha) * ce + alpha * kd
