"""`rplat serve`: vLLM servers for registered models."""

from __future__ import annotations

import json

import click

from rplat.cli._common import cli, open_store
from rplat.config import get_settings

# --- serving --------------------------------------------------------------------------------------


@cli.command()
@click.argument("model_name", metavar="MODEL")
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- VLLM_ARGS...]")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind (0.0.0.0 serves other machines)")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="port to bind (default: a free one)")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME",
              help="also serve this LoRA adapter of the same base, per request (repeatable)")
@click.option("--vllm", "vllm_path", envvar="RPLAT_VLLM", default=None, metavar="PATH",
              help="the `vllm` executable or its venv [env RPLAT_VLLM; default .venv-vllm from `make vllm`, then PATH]")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True, help="float32 matches the hf backend's CPU scores exactly; auto is bf16 for fp32 weights")
@click.option("--max-model-len", type=click.IntRange(16), default=None, help="context length (default: the model's)")
@click.option("--eager", is_flag=True, help="no torch.compile: starts minutes faster on CPU, generates slower")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(1), help="seconds to wait for health")
@click.option("--detach/--foreground", default=False, show_default=True,
              help="return once healthy (stop later with --stop), or run until Ctrl-C/SIGTERM")
@click.option("--stop", "stop_it", is_flag=True, help="stop the server recorded for MODEL and forget its endpoint")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def serve(model_name: str, vllm_args: tuple[str, ...], host: str, port: int | None, adapters: tuple[str, ...],
          vllm_path: str | None, dtype: str, max_model_len: int | None, eager: bool, timeout: float, detach: bool,
          stop_it: bool, as_json: bool) -> None:
    """Start `vllm serve` for registered MODEL, wait until healthy and record its URL in the registry.

    Jobs then reach it with `--param backend=openai`; arguments after `--` go to `vllm serve` unchanged.
    """
    from rplat import serve as serving

    engine = open_store()
    if stop_it:
        pid, forgotten = serving.stop(engine, model_name)
        info = {"stopped_pid": pid, "forgotten": forgotten}
        click.echo(json.dumps(info) if as_json else
                   f"{'stopped server pid ' + str(pid) if pid else 'no server process was running'}; "
                   f"endpoint removed from {', '.join(forgotten) or 'no model'}")
        return
    vllm = serving.find_vllm(vllm_path)
    plan = serving.plan(engine, model_name, home=get_settings().home, vllm=vllm, host=host, port=port,
                        adapters=adapters, dtype=dtype, max_model_len=max_model_len, eager=eager,
                        extra_args=vllm_args)
    if not as_json:
        click.echo(f"starting vllm serve for {', '.join(plan.served)} at {plan.url} (log {plan.log})", err=True)
    server = serving.start(engine, plan, timeout=timeout)
    info = {"url": server.url, "pid": server.pid, "log": str(server.log), "served": server.served,
            "seconds_to_ready": round(server.seconds_to_ready, 1)}
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"serving {', '.join(server.served)} at {server.url} (pid {server.pid}, ready after "
                   f"{server.seconds_to_ready:.0f} s); jobs use it with --param backend=openai")
    if detach:
        return
    serving.run_foreground(engine, server, echo=lambda m: click.echo(m, err=True))
