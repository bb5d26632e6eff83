"""`rplat serve`: vLLM servers for registered models (`serve MODEL`, `serve stop`, `serve ls`)."""

from __future__ import annotations

import json
from typing import Any

import click

from rplat.boundary import INT32_MAX
from rplat.cli._common import HOST, NAME, Finite, emit, listing, open_store
from rplat.config import get_settings

# --- serving --------------------------------------------------------------------------------------


class _StartByDefault(click.Group):
    """A group whose first word, unless it is one of its commands (or help), is the model to `start`:
    `rplat serve MODEL ...` is `rplat serve start MODEL ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_StartByDefault)
def serve() -> None:
    """vLLM servers for registered models: `rplat serve MODEL` starts one, `stop` ends it, `ls` lists them.

    Jobs on any machine sharing the store reach a running server with `--param backend=openai`.
    """


@serve.command("start")
@click.argument("model_name", metavar="MODEL", type=NAME)
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- VLLM_ARGS...]")
@click.option("--host", default="127.0.0.1", show_default=True, type=HOST,
              help="address to bind (0.0.0.0 serves other machines)")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="port to bind (default: a free one)")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME", type=NAME,
              help="also serve this LoRA adapter of the same base, per request (repeatable)")
@click.option("--vllm", "vllm_path", envvar="RPLAT_VLLM", default=None, metavar="PATH",
              help="the `vllm` executable or its venv [env RPLAT_VLLM; default .venv-vllm from `make vllm`, then PATH]")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              show_default=True,
              help="float32 matches the hf backend's CPU scores exactly; auto is bf16 for fp32 weights")
@click.option("--max-model-len", type=click.IntRange(16, INT32_MAX), default=None,
              help="context length (default: the model's)")
@click.option("--eager", is_flag=True, help="no torch.compile: starts minutes faster on CPU, generates slower")
@click.option("--timeout", default=300.0, show_default=True, type=Finite(1, 86_400),
              help="seconds to wait for health")
@click.option("--detach/--foreground", default=False, show_default=True,
              help="return once healthy (stop later with `rplat serve stop MODEL`), or run until Ctrl-C/SIGTERM")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def serve_start(model_name: str, vllm_args: tuple[str, ...], host: str, port: int | None, adapters: tuple[str, ...],
                vllm_path: str | None, dtype: str, max_model_len: int | None, eager: bool, timeout: float,
                detach: bool, as_json: bool) -> None:
    """Start `vllm serve` for registered MODEL, wait until healthy and record the server in the store.

    Jobs then reach it with `--param backend=openai`; arguments after `--` go to `vllm serve` unchanged.
    """
    from rplat import serve as serving

    engine = open_store()
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


@serve.command("stop")
@click.argument("model_name", metavar="MODEL", type=NAME)
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def serve_stop(model_name: str, as_json: bool) -> None:
    """Stop the server recorded for MODEL (on the machine that started it) and mark it stopped."""
    from rplat import serve as serving

    pid, models = serving.stop(open_store(), model_name)
    info: dict[str, Any] = {"stopped_pid": pid, "models": models}
    click.echo(json.dumps(info) if as_json else
               f"{'stopped server pid ' + str(pid) if pid else 'no server process was running'}; "
               f"recorded as stopped for {', '.join(models) or 'no model'}")


@serve.command("ls")
@click.option("--all", "every", is_flag=True, help="also the servers that were stopped")
@listing
def serve_ls(every: bool, as_json: bool, as_csv: bool) -> None:
    """List the servers recorded in the store (running ones, as far as the store knows), newest first."""
    from rplat import serve as serving

    columns = ["id", "model", "served_name", "host", "pid", "url", "started", "stopped", "log"]
    emit(serving.servers(open_store(), every=every), columns, as_json, as_csv)
