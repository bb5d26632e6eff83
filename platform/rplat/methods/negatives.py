"""TDG B5 losses that learn from negative chains: negative training (NT) and unlikelihood (UL).

Every function takes per-token log-probabilities of the target tokens, `token_logprobs` (rows, width), and a
`mask` of the same shape (1 where a token carries loss, 0 on padding and anything not trained on), and returns a
*sum over the masked tokens*. The training loop divides that sum by the number of masked tokens of the whole
global batch (`Objective.units` = target tokens), so each loss is a mean per token over the batch: every token
of every row counts once, long chains weigh more than short ones, as in the reference's HF token-mean loss.

- NT: `L = -sum_b w_b sum_t m_bt log p_bt`, with w = +1 for positives (and gold solutions) and -lambda (0.05)
  for negatives, i.e. maximise E_pos log P - lambda E_neg log P.
- UL: `L = -sum_{b pos} sum_t m log p  +  lambda sum_{b neg} sum_t m (-log(1 - p))`: MLE on the positives and
  token-level unlikelihood on the negatives (Welleck et al.), lambda = 0.05.
"""

from __future__ import annotations

import math

import torch

# p is clamped to at most 1 - 1e-5 inside the unlikelihood, so a token the model is sure of costs at most
# -log(1e-5) = 11.51 instead of infinity (the reference UL code's clamp of 1 - p at 1e-5).
UL_MIN_COMPLEMENT = 1e-5
_LOGP_MAX = math.log1p(-UL_MIN_COMPLEMENT)
_LOG_HALF = -math.log(2.0)


def _check(token_logprobs: torch.Tensor, mask: torch.Tensor) -> None:
    if token_logprobs.shape != mask.shape:
        raise ValueError(f"token_logprobs {tuple(token_logprobs.shape)} and mask {tuple(mask.shape)} differ in shape")


def weighted_nll(token_logprobs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`-sum_b weights[b] * sum_t mask[b, t] * token_logprobs[b, t]`: each row's NLL scaled by its weight.

    A negative weight turns MLE around: the gradient with respect to that row's log-probs is +|w| instead of -w,
    so a descent step lowers the likelihood of the chain (NT's -lambda on negatives)."""
    _check(token_logprobs, mask)
    if weights.shape != token_logprobs.shape[:1]:
        raise ValueError(f"one weight per row: {tuple(weights.shape)} weights for {token_logprobs.shape[0]} rows")
    per_row = (token_logprobs * mask.to(token_logprobs.dtype)).sum(dim=1)
    return -(weights.to(token_logprobs.dtype) * per_row).sum()


def log1m_exp(logp: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(logp)) for logp <= 0, precise at both ends (Maechler 2012): log(-expm1) near 0, log1p(-exp)
    far below it. `logp` is clamped to log(1 - 1e-5) first, so the result is finite and so is its gradient."""
    logp = logp.clamp(max=_LOGP_MAX)
    return torch.where(logp > _LOG_HALF, torch.log(-torch.expm1(logp)), torch.log1p(-torch.exp(logp)))


def unlikelihood(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`-sum_t mask * log(1 - p_t)` over all rows: zero when the model gives the tokens no probability, large
    when it is sure of them; its gradient in log p is p / (1 - p) > 0, so a descent step lowers p."""
    _check(token_logprobs, mask)
    return -(log1m_exp(token_logprobs) * mask.to(token_logprobs.dtype)).sum()


def mle_and_unlikelihood(token_logprobs: torch.Tensor, mask: torch.Tensor, negative: torch.Tensor,
                         ul_lambda: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The UL baseline's loss: MLE on the rows where `negative` is false, `ul_lambda` x unlikelihood on the rows
    where it is true. Returns the summed loss and its two parts as sums (`mle`, `ul`, the latter unweighted), so
    that divided by the batch's tokens they read as per-token shares like the loss."""
    _check(token_logprobs, mask)
    if negative.shape != token_logprobs.shape[:1]:
        raise ValueError(f"one flag per row: {tuple(negative.shape)} flags for {token_logprobs.shape[0]} rows")
    neg_rows = negative.to(torch.bool).unsqueeze(1)
    mle = -(token_logprobs * (mask.to(torch.bool) & ~neg_rows).to(token_logprobs.dtype)).sum()
    ul = unlikelihood(token_logprobs, mask.to(torch.bool) & neg_rows)
    return mle + ul_lambda * ul, {"mle": mle.item(), "ul": ul.item()}
