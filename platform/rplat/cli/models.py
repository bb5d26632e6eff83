"""`rplat models`: the model and adapter registry."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import select

from rplat.cli._common import cli, emit, listing, open_store
from rplat.config import get_settings
from rplat.errors import UserError
from rplat.models import Model
from rplat.store import transaction


@cli.group()
def models() -> None:
    """The model and adapter registry."""


@models.command("ls")
@listing
def models_ls(as_json: bool, as_csv: bool) -> None:
    """List registered models: format, role, fingerprint, the job that made each."""
    engine = open_store()
    with transaction(engine) as session:
        rows = [{"name": m.name, "format": m.format, "role": m.role, "fingerprint": m.fingerprint[:12], "job": m.job_id,
                 "path": m.path} for m in session.scalars(select(Model).order_by(Model.id))]
    emit(rows, ["name", "format", "role", "fingerprint", "job", "path"], as_json, as_csv)


@models.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["base", "lora", "embedding"]), default="base", show_default=True,
              help="how the files are loaded: a Hugging Face model, a peft LoRA adapter, or a sentence-transformers model")
@click.option("--role", default=None, help="agent, scorer, rationalyst, ...")
@click.option("--base", "base_name", default=None, help="for an adapter: the registered model it was trained on")
@click.option("--endpoint", default=None, help="OpenAI-compatible URL that serves this model (backend=openai)")
def models_add(name: str, path: str, fmt: str, role: str | None, base_name: str | None, endpoint: str | None) -> None:
    """Register the model (or adapter) in directory PATH under NAME; its fingerprint is a hash of its files."""
    from rplat.registry import get_model, register_model

    if fmt == "lora" and base_name is None:
        raise UserError("an adapter needs its base model: pass --base NAME (see `rplat models ls`).")
    engine = open_store()
    with transaction(engine) as session:
        parents = {"base": get_model(session, base_name).id} if base_name else None
        config = {"endpoint": endpoint} if endpoint else {}
        model = register_model(session, name, fmt, Path(path).resolve(), role=role, parents=parents, config=config)
        fingerprint = model.fingerprint
    click.echo(f"model {name} registered ({fmt}, fingerprint {fingerprint[:12]})")


@models.command("bundled")
def models_bundled() -> None:
    """Convert the bundled SmolLM2-135M-Instruct (GGUF) to safetensors once and register it."""
    from rplat.bundled import SMOLLM2, ensure_smollm2

    engine = open_store()
    with transaction(engine) as session:
        model = ensure_smollm2(session, get_settings().home)
        path = model.path
    click.echo(f"model {SMOLLM2} registered at {path}")
