"""NAT step cost: one `train-nat` optimizer step against a plain single-LoRA peft step, same model and batch.

Command: OMP_NUM_THREADS=1 .venv/bin/python bench/nat.py [--model smollm2|tiny] [--batch-size 2] [--max-length 256]
         [--repeats 5]

Both sides train the bundled SmolLM2-135M-Instruct (converted once under .cache/bench; `--model tiny` for a
smoke run) in float32 on the CPU, in train mode (dropout 0.05), with the reference's LoRA settings (r 8, alpha
16, q_proj and v_proj) on one micro-batch: gsm_symbolic problems with their worked solutions as B1's training
text, padded, cut at `--max-length` tokens (smaller than train-nat's defaults, 4 x 512, so that a run takes
minutes on one shared CPU thread; the ratio is per step either way). One step = forward, the causal-LM loss
(`train-nat`'s objective: token cross-entropy plus the per-layer w_neg metrics), backward, gradient clipping and
AdamW. peft: `get_peft_model` with that LoRA. NAT: the same base with `attach_nat` (random, frozen negative
LoRA; the positive LoRA and unit train). The steps alternate (peft, NAT, peft, ...) after one warm-up each, and
each side's median counts. The last line reads `ratio nat: X` with X = peft step time / NAT step time (X > 1
would mean NAT is faster); the goal is NAT <= 1.35x peft's time, i.e. X >= 0.74.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.pop(0)  # bench/ must not shadow stdlib modules (bench/queue.py is "queue")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from rplat.methods.nat import NATConfig, attach_nat  # noqa: E402
from rplat.prompts import tdg_training_text  # noqa: E402
from rplat.runners.tdg.examples import encode  # noqa: E402
from rplat.runners.tdg.nat import nat_objective  # noqa: E402
from rplat.runners.training.loop import causal_lm_objective, target_tokens  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def load(which: str) -> tuple[torch.nn.Module, object]:
    if which == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_lm import tiny_model, tiny_tokenizer

        return tiny_model(), tiny_tokenizer()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rplat.bundled import convert_smollm2

    path = convert_smollm2(REPO / ".cache" / "bench")
    return (AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32),
            AutoTokenizer.from_pretrained(str(path)))


def batch_texts(n: int) -> list[str]:
    import reasoning_gym

    items = reasoning_gym.create_dataset("gsm_symbolic", size=n, seed=0)
    return [tdg_training_text(item["question"], item["metadata"]["answer_cot"]) for item in items]


def stepper(model: torch.nn.Module, loss_fn, batch):  # type: ignore[no-untyped-def]
    """One optimizer step of `model`'s trainable parameters on `batch`, as the training loop takes it."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-4)
    units = target_tokens(batch)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(model, batch)
        (loss / units).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return loss.item() / units

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--batch-size", type=int, default=2, help="examples in the batch (train-nat's default: 4)")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per example (train-nat's default: 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per side, alternating")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    base, tokenizer = load(args.model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    objective = causal_lm_objective(pad)
    batch = objective.collate([encode(tokenizer, t, args.max_length) for t in batch_texts(args.batch_size)])
    tokens = int(batch["attention_mask"].sum())

    from peft import LoraConfig, get_peft_model

    cfg = NATConfig()
    torch.manual_seed(0)
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(r=cfg.r, lora_alpha=cfg.alpha,
                                                                lora_dropout=cfg.dropout,
                                                                target_modules=list(cfg.target_modules),
                                                                task_type="CAUSAL_LM")).train()
    neg_state = {k: torch.randn_like(v) * 0.02 for k, v in peft_model.state_dict().items() if "lora_" in k}
    nat_model = attach_nat(base, cfg, neg_state).train()
    peft_step = stepper(peft_model, objective.loss, batch)
    nat_step = stepper(nat_model, nat_objective(pad).loss, batch)
    peft_step(), nat_step()  # warm-up

    times: dict[str, list[float]] = {"peft": [], "nat": []}
    for _ in range(args.repeats):
        for side, step in (("peft", peft_step), ("nat", nat_step)):
            t0 = time.perf_counter()
            step()
            times[side].append(time.perf_counter() - t0)
    t_peft, t_nat = statistics.median(times["peft"]), statistics.median(times["nat"])
    trainable = {side: sum(p.numel() for p in m.parameters() if p.requires_grad)
                 for side, m in (("peft", peft_model), ("nat", nat_model))}
    print(f"model {args.model} float32 on CPU ({torch.get_num_threads()} thread(s)); batch {args.batch_size} x "
          f"{batch['input_ids'].shape[1]} tokens ({tokens} real); {args.repeats} alternating steps per side")
    print(f"peft LoRA step:  {t_peft:.3f} s median (min {min(times['peft']):.3f}), "
          f"{trainable['peft']:,} trainable parameters")
    print(f"train-nat step:  {t_nat:.3f} s median (min {min(times['nat']):.3f}), "
          f"{trainable['nat']:,} trainable parameters; NAT / peft = {t_nat / t_peft:.2f}x (goal <= 1.35x)")
    print(f"ratio nat: {t_peft / t_nat:.2f}")


if __name__ == "__main__":
    main()
