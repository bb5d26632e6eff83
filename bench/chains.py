"""collect-chains' generation path on the hf backend against a naive loop of one `generate` per chain.

Command: OMP_NUM_THREADS=1 .venv/bin/python bench/chains.py [--problems 8] [--n 8] [--max-tokens 48] [--no-vllm]

One model, the bundled SmolLM2-135M-Instruct (converted once under .cache/bench, registered in a fresh SQLite
store, resolved by `prepare_backend` and opened by `open_backend`, as a job opens it), writes n = 8 chains per
problem at temperature 0.7 for one-digit sums, each prompt `Problem:\\n{q}\\nSolution:` after two worked
demonstrations (as collect-chains builds it). rplat runs collect-chains' own `sample_chains` through
`CachedBackend` on that empty store: all problems of a batch in one call, each prompt encoded once for its n
samples. The baseline is the reference scripts' way: per problem, per chain, its own `model.generate` over the
full prompt, generating exactly as many tokens as rplat did for that chain (so both sides do the same work).
Figures are chains per second; the last line reads `ratio chains: X` (X > 1: rplat is faster). With .venv-vllm
present, the same chains are also asked of `rplat serve` (vLLM on CPU, float32, eager) through the openai
backend, printed as an extra figure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.pop(0)  # bench/ must not shadow stdlib modules (bench/queue.py is "queue")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rplat.bundled import SMOLLM2, convert_smollm2  # noqa: E402
from rplat.llm import Backend, Completion, Sampling  # noqa: E402
from rplat.llm.cache import CachedBackend  # noqa: E402
from rplat.llm.load import open_backend  # noqa: E402
from rplat.llm.resolve import prepare_backend  # noqa: E402
from rplat.migrate import upgrade  # noqa: E402
from rplat.prompts import tdg_prompt  # noqa: E402
from rplat.registry import register_model  # noqa: E402
from rplat.runners.tdg.chains import Item, chain_sampling, demonstrations, sample_chains  # noqa: E402
from rplat.store import get_engine, transaction  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VLLM = REPO / ".venv-vllm" / "bin" / "vllm"
TEMPERATURE = 0.7
N_FEWSHOT = 2


def sums(n: int) -> list[tuple[int, str, str, str]]:
    """(id, question, worked solution, answer) of n distinct one-digit sums."""
    pairs = [(a, b) for a in range(10) for b in range(10)][:n]
    return [(k, f"What is {a} + {b}?", f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.", str(a + b))
            for k, (a, b) in enumerate(pairs)]


def items(problems: list[tuple[int, str, str, str]], pool: list[tuple[int, str, str, str]], n: int) -> list[Item]:
    demo_pool = [(pid, q, s) for pid, q, s, _ in pool]
    return [Item(pid, gold, tdg_prompt(q, demonstrations(demo_pool, pid, q, N_FEWSHOT, 0)), tuple(range(n)))
            for pid, q, _, gold in problems]


def run_rplat(llm: Backend, todo: list[Item], sampling: Sampling, batch_size: int
              ) -> tuple[float, list[tuple[Item, int, Completion]]]:
    out: list[tuple[Item, int, Completion]] = []
    t0 = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        out += sample_chains(llm, sampling, todo[start:start + batch_size])
    return time.perf_counter() - t0, out


def generated_tokens(c: Completion) -> int:
    """Tokens the model produced for a chain: the kept ones plus the one that stopped it."""
    return max(len(c.token_ids) + (c.finish_reason == "stop"), 1)


@torch.inference_mode()
def run_naive(backend: object, chains: list[tuple[Item, int, Completion]]) -> float:
    """One `generate` per chain over its full prompt, as many new tokens as rplat's chain had."""
    t0 = time.perf_counter()
    with backend.activated():  # type: ignore[attr-defined]
        model = backend.model  # type: ignore[attr-defined]
        for item, _, c in chains:
            ids = torch.tensor([backend.encode(item.prompt)])  # type: ignore[attr-defined]
            tokens = generated_tokens(c)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                 min_new_tokens=tokens, do_sample=True, temperature=TEMPERATURE, top_p=1.0, top_k=0,
                                 return_dict_in_generate=True, output_logits=True,
                                 pad_token_id=backend.tokenizer.pad_token_id)  # type: ignore[attr-defined]
            torch.stack([torch.log_softmax(step.float(), dim=-1) for step in gen.logits], dim=1)
    return time.perf_counter() - t0


def run_vllm(home: Path, db_url: str, todo: list[Item], sampling: Sampling, batch_size: int) -> str:
    """The same chains through `rplat serve` (a fresh cache store, so nothing is replayed); one line."""
    env = dict(os.environ, RPLAT_DATABASE_URL=db_url, RPLAT_HOME=str(home))
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    rplat = [sys.executable, "-m", "rplat.cli"]
    began = time.monotonic()
    proc = subprocess.run([*rplat, "serve", SMOLLM2, "--detach", "--eager", "--dtype", "float32", "--max-model-len",
                           "2048", "--timeout", "600", "--json"], env=env, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        return f"rplat serve (vLLM): not measured, the server did not start: {proc.stderr.strip()[-300:]}"
    ready = time.monotonic() - began
    log = home / "serve" / f"{SMOLLM2}.log"
    try:
        engine = get_engine(db_url)
        llm = open_backend(prepare_backend(engine, SMOLLM2, backend="openai", home=home))
        cache = get_engine(f"sqlite:///{home / 'vllm-cache.db'}")
        upgrade(cache)
        run_rplat(CachedBackend(llm, cache), todo[:1], Sampling(temperature=TEMPERATURE, max_tokens=4), 1)  # warm
        seconds, chains = run_rplat(CachedBackend(llm, cache), todo, sampling, batch_size)
        tokens = sum(generated_tokens(c) for _, _, c in chains)
        return (f"rplat serve (vLLM CPU, float32, eager; ready in {ready:.0f} s): "
                f"{len(chains) / seconds:8.2f} chains/s ({len(chains)} chains, {tokens} tokens, {seconds:.2f} s; "
                "each chain ends at its own stop)")
    except Exception as exc:  # a figure beside the ratio: say why it is missing, keep the hf figures
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        return f"rplat serve (vLLM): not measured ({type(exc).__name__}: {str(exc)[:200]}); log: {' | '.join(tail)}"
    finally:
        subprocess.run([*rplat, "serve", "stop", SMOLLM2], env=env, capture_output=True, timeout=300)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--problems", type=int, default=8)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8, help="problems per call (collect-chains' batch_size)")
    parser.add_argument("--no-vllm", action="store_true", help="skip the rplat serve figure")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    every = sums(args.problems + 8)
    todo = items(every[:args.problems], every, args.n)
    sampling = chain_sampling(TEMPERATURE, args.max_tokens, 0)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        db_url = f"sqlite:///{home / 'rplat.db'}"
        engine = get_engine(db_url)
        upgrade(engine)
        with transaction(engine) as s:
            register_model(s, SMOLLM2, "base", convert_smollm2(REPO / ".cache" / "bench"), role="agent")
        backend = open_backend(prepare_backend(engine, SMOLLM2, home=home))
        # Warm up both paths once on one problem (a throwaway store: the measured run caches nothing it replays).
        warm_engine = get_engine(f"sqlite:///{home / 'warm.db'}")
        upgrade(warm_engine)
        _, warm = run_rplat(CachedBackend(backend, warm_engine), items(every[-1:], every, 2),
                            chain_sampling(TEMPERATURE, 8, 1), 1)
        run_naive(backend, warm)
        t_ours, chains = run_rplat(CachedBackend(backend, engine), todo, sampling, args.batch_size)
        t_naive = run_naive(backend, chains)
        report(args, todo, chains, backend, t_ours, t_naive)
        if not args.no_vllm and VLLM.exists():
            print(run_vllm(home, db_url, todo, sampling, args.batch_size), flush=True)
    print(f"ratio chains: {t_naive / t_ours:.2f}")


def report(args: argparse.Namespace, todo: list[Item], chains: list[tuple[Item, int, Completion]], backend: object,
           t_ours: float, t_naive: float) -> None:
    tokens = sum(generated_tokens(c) for _, _, c in chains)
    prompt_tokens = sum(len(backend.encode(it.prompt)) for it in todo) / len(todo)  # type: ignore[attr-defined]
    stopped = sum(c.finish_reason == "stop" for _, _, c in chains)
    print(f"model {SMOLLM2}, {len(todo)} problems x n={args.n} = {len(chains)} chains, T={TEMPERATURE}, "
          f"max {args.max_tokens} tokens ({tokens} generated, {stopped} chains stopped early), prompts "
          f"{prompt_tokens:.0f} tokens on average, batch {args.batch_size} problems")
    print(f"rplat collect-chains path (hf):   {len(chains) / t_ours:8.2f} chains/s ({t_ours:.2f} s)")
    print(f"naive loop, one generate a chain: {len(chains) / t_naive:8.2f} chains/s ({t_naive:.2f} s)", flush=True)


if __name__ == "__main__":
    main()
