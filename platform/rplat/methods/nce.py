"""TDG B3, Negative Calibrated Enhancement: the per-chain KD weight beta and the NCE loss.

The frozen NAT model is run in mode neg (z_neg) and mix (z_nat) on a chain. Following the code, the 1e-7 goes on
the target distributions only: with q_neg = softmax(z_neg / T) + 1e-7, the token KL is
KL_t = sum_v q_neg (log q_neg - log_softmax(z_nat / T)), i.e. F.kl_div(log_softmax(z_nat / T), q_neg) summed over
the vocabulary, and beta = tanh(masked mean of KL_t), one value per sequence in [0, 1). The student learns
L = (1 - alpha) CE + alpha KD with KD = -T^2 sum_t m_t sum_v q_nat log_softmax(z_stu / T) (beta_offset + beta)
/ sum_t m_t and q_nat = softmax(z_nat / T) + 1e-7 (the code's offset 0.5, alpha 0.5). KD is a mean over each
sequence's tokens; the code takes the mean over all tokens of the batch, the same at its micro-batch of 1.
Every function works on whole batches: logits (B, L, V), masks (B, L), one value per sequence (B,). Logits are
computed in float32, or in float64 when given in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-7


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """float64 logits as they are, any other float type (fp16, bf16, fp32) as float32."""
    return logits if logits.dtype == torch.float64 else logits.float()


def token_kl(logits_neg: torch.Tensor, logits_nat: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p_neg || p_nat) at every position, shape (B, L), as the code computes it:
    F.kl_div(log_softmax(z_nat / T), softmax(z_neg / T) + 1e-7) summed over the vocabulary. The 1e-7 is on the
    target q_neg only; p_nat enters as its exact log-softmax, so a token that NAT all but rules out (p_nat far
    below 1e-7) where NEG puts mass counts in full."""
    q_neg = F.softmax(_wide(logits_neg) / temperature, dim=-1) + EPS
    log_p_nat = F.log_softmax(_wide(logits_nat) / temperature, dim=-1)
    return F.kl_div(log_p_nat, q_neg, reduction="none").sum(-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where `mask` is 1, per sequence; a sequence with no such position gives 0."""
    m = mask.to(values.dtype)
    return (values * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def beta(kl_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """tanh of the masked mean token KL, per sequence. The target q_neg sums to 1 + V * 1e-7 >= 1, so the token KL
    of `token_kl` is >= (1 + V * 1e-7) log(1 + V * 1e-7) > 0 (log-sum inequality) but for rounding; the clamp keeps
    beta in [0, 1) should rounding give a tiny negative mean. Even identical neg and nat logits give beta > 0."""
    return torch.tanh(masked_mean(kl_t, mask).clamp_min(0.0))


def kd_loss(student_logits: torch.Tensor, nat_logits: torch.Tensor, mask: torch.Tensor, beta: torch.Tensor,
            temperature: float = 1.0, beta_offset: float = 0.5) -> torch.Tensor:
    """-T^2 * masked mean over tokens of sum_v q_nat log p_stu, times (beta_offset + beta), per sequence (B,), with
    the code's target weight q_nat = softmax(z_nat / T) + 1e-7 and log p_stu = log_softmax(z_stu / T).

    The teacher side carries no gradient: `nat_logits` come from the frozen NAT model and are detached here."""
    q_nat = F.softmax(_wide(nat_logits.detach()) / temperature, dim=-1) + EPS
    log_p_stu = F.log_softmax(_wide(student_logits) / temperature, dim=-1)
    cross = -(q_nat * log_p_stu).sum(-1)
    return temperature ** 2 * masked_mean(cross, mask) * (beta_offset + beta.to(cross.dtype))


def sequence_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """HF's causal-LM loss per sequence (B,): mean cross-entropy of the next-token predictions over the labels
    that are not -100 (0 for a sequence without any)."""
    targets = labels[:, 1:]
    losses = F.cross_entropy(_wide(logits[:, :-1]).transpose(1, 2), targets, ignore_index=-100, reduction="none")
    return masked_mean(losses, targets != -100)


def nce_loss(ce: torch.Tensor, kd: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """L = (1 - alpha) CE + alpha KD (elementwise: per sequence when given per-sequence values)."""
    return (1.0 - alpha) * ce + alpha * kd
