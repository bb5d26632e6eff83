"""Loss-delta scoring throughput: rplat's batched scorer against the reference code's two unbatched passes per rationale.

Command: OMP_NUM_THREADS=1 .venv/bin/python bench/loss_delta.py [--n 48] [--model tiny|smollm2]

Both sides score the same rationales with the same model (the bundled SmolLM2-135M-Instruct by default,
converted once under .cache/bench): the prompt is the A4 chat template without / with the rationale, and the
result is the per-token log-probs of the following text. rplat scores through `HFBackend.score` as the
`score-rationales` job does (length-bucketed, left-padded batches, logits only for the continuation). The
baseline does what the reference code asks a server for, one rationale at a time: two full forward passes
and a log-softmax over every position. The last line reads `ratio loss_delta: X` (X > 1: rplat is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.pop(0)  # bench/ must not shadow stdlib modules (bench/queue.py is "queue")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from rplat.llm.hf import HFBackend  # noqa: E402
from rplat.prompts import TEMPLATES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def rationales(n: int) -> list[tuple[str, str, str]]:
    out = []
    for k in range(n):
        pre = (f"Question: A shop sells {k + 3} boxes of pencils with {k % 9 + 4} pencils in each box. "
               f"On Monday it sold {k % 5 + 1} boxes and on Tuesday twice as many. "
               "How many pencils are left in the shop?\nAnswer: On Tuesday the shop sold " f"{2 * (k % 5 + 1)} boxes.")
        rat = "Add the boxes sold on both days, then subtract from the stock and multiply by the pencils per box"
        fol = (f"In total it sold {3 * (k % 5 + 1)} boxes, so {k + 3 - 3 * (k % 5 + 1)} boxes are left, "
               f"which is {(k + 3 - 3 * (k % 5 + 1)) * (k % 9 + 4)} pencils.")
        out.append((pre, rat, fol))
    return out


def load(which: str) -> HFBackend:
    if which == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_lm import tiny_model, tiny_tokenizer

        return HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny", batch_size=16)
    from rplat.bundled import convert_smollm2

    path = convert_smollm2(REPO / ".cache" / "bench")
    return HFBackend.load(path, fingerprint="smollm2", device="cpu", batch_size=16)


def prompts(backend: HFBackend, items: list[tuple[str, str, str]]) -> tuple[list[str], list[str], list[str]]:
    system = TEMPLATES["score-future"].system
    without = [backend.chat_prompt([{"role": "system", "content": system}, {"role": "user", "content": p}])
               for p, _, _ in items]
    with_ = [backend.chat_prompt([{"role": "system", "content": system}, {"role": "user", "content": f"{p}. {r}"}])
             for p, r, _ in items]
    return without, with_, [f for _, _, f in items]


@torch.inference_mode()
def naive(backend: HFBackend, without: list[str], with_: list[str], following: list[str]) -> list[list[float]]:
    out = []
    for ctx_a, ctx_b, fol in zip(without, with_, following, strict=True):
        cont = backend.encode_continuation(fol)
        for ctx in (ctx_a, ctx_b):
            ids = torch.tensor([backend.encode(ctx) + cont])
            logprobs = torch.log_softmax(backend.model(input_ids=ids).logits[0].float(), dim=-1)
            out.append([logprobs[ids.shape[1] - len(cont) + j - 1, t].item() for j, t in enumerate(cont)])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="smollm2")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    backend = load(args.model)
    items = rationales(args.n)
    without, with_, following = prompts(backend, items)
    backend.score(without[:2], following[:2])  # warm up both paths once
    naive(backend, without[:1], with_[:1], following[:1])

    t0 = time.perf_counter()
    ours = backend.score(without + with_, following + following)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = naive(backend, without, with_, following)
    t_naive = time.perf_counter() - t0

    ours_paired = [x for k in range(args.n) for x in (ours[k], ours[args.n + k])]
    worst = max(abs(a - b) for row_a, row_b in zip(ours_paired, reference, strict=True)
                for a, b in zip(row_a, row_b, strict=True))
    print(f"model {args.model}, {args.n} rationales, {sum(len(backend.encode_continuation(f)) for f in following)} "
          f"following tokens; max |log-prob difference| {worst:.2e}")
    print(f"rplat batched scorer: {args.n / t_ours:8.2f} rationales/s ({t_ours:.2f} s)")
    print(f"naive two passes:     {args.n / t_naive:8.2f} rationales/s ({t_naive:.2f} s)")
    print(f"ratio loss_delta: {t_naive / t_ours:.2f}")


if __name__ == "__main__":
    main()
