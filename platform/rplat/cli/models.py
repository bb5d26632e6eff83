"""`rplat models`: the model and adapter registry."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import select

from rplat.cli._common import NAME, Text, emit, listing, open_store
from rplat.config import get_settings
from rplat.models import Model
from rplat.store import transaction


@click.group()
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
@click.argument("name", type=NAME)
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", default=None, metavar="FORMAT",
              help="base (a Hugging Face model), lora (a peft adapter) or embedding (sentence-transformers) "
                   "[default: detected: adapter_config.json -> lora, modules.json -> embedding, config.json -> base]")
@click.option("--role", default=None, type=Text(32), help="agent, scorer, rationalyst, ...")
@click.option("--base", "base_name", default=None, type=NAME,
              help="the registered model an adapter was trained on [default: the one its adapter_config.json names]")
@click.option("--endpoint", default=None, help="OpenAI-compatible URL that serves this model (backend=openai)")
def models_add(name: str, path: str, fmt: str | None, role: str | None, base_name: str | None,
               endpoint: str | None) -> None:
    """Register the model (or adapter) in directory PATH under NAME, after checking its files; its fingerprint
    and sha256 are hashes of them."""
    from rplat.llm.formats import detect_format, get_format
    from rplat.registry import adapter_base, get_model, register_model

    directory = Path(path).resolve()
    fmt = fmt or detect_format(directory)
    loader = get_format(fmt)
    engine = open_store()
    with transaction(engine) as session:
        base = None
        if base_name:
            base = get_model(session, base_name)
        elif loader.adapter:
            base = adapter_base(session, fmt, directory)
        parents = {"base": base.id} if base is not None else None
        config = {"endpoint": endpoint} if endpoint else {}
        model = register_model(session, name, fmt, directory, role=role, parents=parents, config=config)
        fingerprint = model.fingerprint
    based = f" on {base.name}" if base is not None else ""
    click.echo(f"model {name} registered ({fmt}{based}, fingerprint {fingerprint[:12]})")


@models.command("bundled")
def models_bundled() -> None:
    """Convert the bundled SmolLM2-135M-Instruct (GGUF) to safetensors once and register it."""
    from rplat.bundled import SMOLLM2, ensure_smollm2

    engine = open_store()
    with transaction(engine) as session:
        model = ensure_smollm2(session, get_settings().home)
        path = model.path
    click.echo(f"model {SMOLLM2} registered at {path}")
