"""Guided solving (RATIONALYST A6, implicit): rplat's Solver against a naive per-candidate loop.

Command: OMP_NUM_THREADS=1 .venv/bin/python bench/guided.py [--problems 4] [--steps 3] [--model tiny|smollm2]

One model (the bundled SmolLM2-135M-Instruct by default, converted once under .cache/bench) is the agent, the
RATIONALYST model and the scorer. The problems are reasoning-gym `gsm_symbolic` questions (seed 0); two more
of them, with their worked solutions, are the few-shot demonstrations, as in a `solve` job. Every step the
agent samples N = 3 candidates (temperature 0.7), the rationale model writes a rationale from the trajectory
text, and the scorer rates each candidate by its mean log-prob after a "Rationale: r" turn.

rplat runs the real `Solver` of runners/solve.py (all problems advance one step together) through
`CachedBackend` on a fresh SQLite store, so nothing is cached. The baseline is what the reference scripts do
against a server, one request at a time: per problem, per step, per candidate its own `generate` over the
full prompt, then the rationale, then one full forward pass (log-softmax at every position, like `echo`) per
candidate over scorer context + candidate. It replays the trajectory states rplat reached and generates exactly
as many tokens as rplat did for each candidate and rationale, so both sides do the same work. The figures are
seconds per problem; the last line reads `ratio guided: X` (X > 1: rplat is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.pop(0)  # bench/ must not shadow stdlib modules (bench/queue.py is "queue")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rplat.llm import Completion, Sampling  # noqa: E402
from rplat.llm.cache import CachedBackend  # noqa: E402
from rplat.llm.hf import HFBackend  # noqa: E402
from rplat.methods.guided import fewshot_messages  # noqa: E402
from rplat.migrate import upgrade  # noqa: E402
from rplat.runners.rationalyst.kinds import SolveParams  # noqa: E402
from rplat.runners.rationalyst.solve import Models, Solver, Trajectory  # noqa: E402
from rplat.store import get_engine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
N_CANDIDATES = 3
TEMPERATURE = 0.7


def load(which: str) -> HFBackend:
    if which == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_lm import tiny_model, tiny_tokenizer

        return HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny")
    from rplat.bundled import convert_smollm2
    from rplat.llm import load as loader
    from rplat.llm.resolve import BackendSpec

    path = str(convert_smollm2(REPO / ".cache" / "bench"))
    # rplat's one loader, on a spec that names the directory (no registry here); the backend is built over
    # the module itself, since the baseline calls the model directly
    module, tokenizer = loader.load(BackendSpec("hf", "smollm2", path, "smollm2", "smollm2", device="cpu"))
    return HFBackend(module, tokenizer, fingerprint="smollm2")


def problems(n: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(demonstrations, problems): two worked gsm_symbolic examples and `n` questions with their answers."""
    import reasoning_gym

    items = list(reasoning_gym.create_dataset("gsm_symbolic", size=n + 2, seed=0))
    demos = [(it["question"], it["metadata"]["answer_cot"]) for it in items[:2]]
    return demos, [(it["question"], str(it["answer"])) for it in items[2:]]


@dataclass
class Calls:
    """What rplat asked the models, in order, so the baseline can replay the same states."""

    generate: list[tuple[list[str], Sampling, int, list[list[Completion]]]] = field(default_factory=list)
    score: list[tuple[list[str], list[str]]] = field(default_factory=list)


class Recording(CachedBackend):
    def __init__(self, backend: HFBackend, engine: object, calls: Calls) -> None:
        super().__init__(backend, engine)  # type: ignore[arg-type]
        self.calls = calls

    def generate(self, prompts: Sequence[str], sampling: Sampling, n: int = 1) -> list[list[Completion]]:
        out = super().generate(prompts, sampling, n)
        self.calls.generate.append((list(prompts), sampling, n, out))
        return out

    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[list[float]]:
        self.calls.score.append((list(contexts), list(continuations)))
        return super().score(contexts, continuations)


def run_rplat(backend: HFBackend, demos: list[tuple[str, str]], todo: list[tuple[str, str]], steps: int,
              db: Path) -> tuple[float, Calls, list[Trajectory]]:
    engine = get_engine(f"sqlite:///{db}")
    upgrade(engine)
    calls = Calls()
    models = Models(*(Recording(backend, engine, calls) for _ in range(3)))
    params = SolveParams(problems="bench", method="rationalyst-implicit", rationalyst="bench", model="bench",
                         n_candidates=N_CANDIDATES, temperature=TEMPERATURE, max_solve_steps=steps)
    solver = Solver(params, models, fewshot_messages(demos))
    batch = [Trajectory(k, q, gold, 0) for k, (q, gold) in enumerate(todo)]
    t0 = time.perf_counter()
    solver.solve(batch, lambda: None)
    return time.perf_counter() - t0, calls, batch


def generated_tokens(c: Completion) -> int:
    """Tokens the model produced for a completion: the kept ones plus the one that stopped it."""
    return max(len(c.token_ids) + (c.finish_reason == "stop"), 1)


@torch.inference_mode()
def naive_generate(backend: HFBackend, prompt: str, sampling: Sampling, tokens: int) -> None:
    ids = torch.tensor([backend.encode(prompt)])
    kwargs: dict[str, object] = dict(max_new_tokens=tokens, min_new_tokens=tokens, return_dict_in_generate=True,
                                     output_logits=True, pad_token_id=backend.tokenizer.pad_token_id)
    if sampling.greedy:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
    gen = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
    torch.stack([torch.log_softmax(step.float(), dim=-1) for step in gen.logits], dim=1)


@torch.inference_mode()
def naive_score(backend: HFBackend, context: str, continuation: str) -> list[float]:
    cont = backend.encode_continuation(continuation)
    ids = torch.tensor([backend.encode(context) + cont])
    logprobs = torch.log_softmax(backend.model(input_ids=ids).logits[0].float(), dim=-1)
    return [logprobs[ids.shape[1] - len(cont) + j - 1, t].item() for j, t in enumerate(cont)]


def run_naive(backend: HFBackend, calls: Calls, questions: list[str]) -> float:
    """Replay rplat's steps problem by problem, one request per candidate."""
    # rplat's calls per step: agent generate (n=3), rationale generate (n=1), one score call.
    work: dict[str, list[tuple[str, object]]] = {q: [] for q in questions}
    agent_calls = [c for c in calls.generate if c[2] > 1]
    rationale_calls = [c for c in calls.generate if c[2] == 1]
    for (prompts, sampling, _, outs), (r_prompts, r_sampling, _, r_outs), (contexts, conts) in zip(
            agent_calls, rationale_calls, calls.score, strict=True):
        pos = 0
        for prompt, cands, r_prompt, [rat] in zip(prompts, outs, r_prompts, r_outs, strict=True):
            todo = next(work[q] for q in questions if f"Question: {q}\nAnswer:" in r_prompt)
            todo += [("gen", (prompt, sampling, generated_tokens(c))) for c in cands]
            todo.append(("gen", (r_prompt, r_sampling, generated_tokens(rat))))
            todo += [("score", (contexts[pos + k], conts[pos + k])) for k in range(len(cands))]
            pos += len(cands)
    t0 = time.perf_counter()
    for todo in work.values():
        for kind, args in todo:
            if kind == "gen":
                naive_generate(backend, *args)  # type: ignore[misc]
            else:
                naive_score(backend, *args)  # type: ignore[misc]
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="smollm2")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    backend = load(args.model)
    demos, todo = problems(args.problems)
    with tempfile.TemporaryDirectory() as tmp:
        # Warm up both paths once (a one-step, one-problem solve on a throwaway store).
        _, warm, _ = run_rplat(backend, demos, todo[:1], 1, Path(tmp) / "warm.db")
        run_naive(backend, warm, [q for q, _ in todo[:1]])
        # A new backend on the same weights: it has encoded nothing yet, so it reuses no prompt of the warm-up.
        fresh = HFBackend(backend.model, backend.tokenizer, fingerprint=backend.fingerprint,
                          batch_size=backend.batch_size)
        t_ours, calls, batch = run_rplat(fresh, demos, todo, args.steps, Path(tmp) / "rplat.db")
    t_naive = run_naive(backend, calls, [q for q, _ in todo])

    n_steps = sum(len(t.steps) for t in batch)
    cand_tokens = sum(generated_tokens(c) for _, _, n, outs in calls.generate if n > 1 for cs in outs for c in cs)
    rat_tokens = sum(generated_tokens(c) for _, _, n, outs in calls.generate if n == 1 for cs in outs for c in cs)
    prompt_tokens = sum(len(backend.encode(p)) for ps, _, n, _ in calls.generate if n > 1 for p in ps)
    print(f"model {args.model}, {len(batch)} problems, {n_steps} steps, N={N_CANDIDATES}, T={TEMPERATURE}; "
          f"{cand_tokens} candidate + {rat_tokens} rationale tokens generated, "
          f"agent prompts {prompt_tokens / max(n_steps, 1):.0f} tokens/step on average")
    print(f"rplat Solver (rationalyst-implicit): {t_ours / len(batch):8.2f} s/problem ({t_ours:.2f} s)")
    print(f"naive per-candidate loop:           {t_naive / len(batch):8.2f} s/problem ({t_naive:.2f} s)")
    print(f"ratio guided: {t_naive / t_ours:.2f}")


if __name__ == "__main__":
    main()
