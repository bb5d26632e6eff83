"""The CLI's promise as a property: whatever value any option or argument of any command is given, `rplat` ends
with exit 0, or with exit 2 and one `error:` line; never a traceback.

The command lines are drawn by `hypothesis` from the commands' own declarations (walked from `rplat.cli.cli`), so
an option added later is drawn too. Each value comes from a strategy for the option's type, biased to what breaks
programs: integers past 64 bits and below zero, floats that are not finite, empty and 500-character names, path
traversals, bytes that are not UTF-8 (as Python hands them over: lone surrogates), SQL. Commands that serve or loop
until stopped (runner, dashboard, serve start, slurm scale) and the schema's own commands are left out; those that
write files write under the test's directory (`--out` is not drawn), and `slurm submit` only dry-runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli_errors import run_cli

from rplat.cli import cli

from stores import Store

LEFT_OUT = {("runner",), ("dashboard",), ("serve", "start"), ("slurm", "scale"), ("db", "check"), ("db", "upgrade"),
            ("db", "downgrade"), ("init",)}
FIXED = {("slurm", "submit"): ["--dry-run"]}  # appended to every drawn command line of that command
NOT_DRAWN = {"out", "help"}  # where a command writes is the test's to say


def leaves(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            yield from leaves(command, (*path, name))
        elif (*path, name) not in LEFT_OUT:
            yield (*path, name), command


COMMANDS = sorted(leaves(cli), key=lambda leaf: leaf[0])

surrogate = st.integers(0xDC80, 0xDCFF).map(chr)  # how Python decodes a byte that is not UTF-8 in argv
hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "..", "../../evil", "/etc/passwd", "a" * 500, "x" * 201, "-", "none", "0", "1:sc",
                     "store.pg_catalog.pg_authid", "SELECT 1", "false) OR (true", "tiny", "probe", "jobs", "kept",
                     "rationales", "demo", "sc", "50:sc"]),
    st.tuples(st.text(max_size=8), surrogate, st.text(max_size=8)).map("".join),
)
INT_EDGES = [2**63, -(2**63) - 1, 10**12, -1]
FLOAT_EDGES = ["inf", "nan", "1e400", "-1"]
TEXT_EDGES = ["", "../../evil", "a" * 500, "a\udcffb"]
hostile_int = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from([*INT_EDGES, 0, 1, 2**31, 2**31 - 1, 2**63 - 1, 10**10]),
).map(str)
hostile_float = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["inf", "-inf", "nan", "1e400", "-0.0", "0", "1e-320"]),
)


def type_of(param: click.Parameter) -> str:
    kind = param.type
    if isinstance(kind, click.Choice):
        return "choice"
    if isinstance(kind, click.types.IntParamType) or kind.name in ("integer", "integer range"):
        return "int"
    if isinstance(kind, click.types.FloatParamType) or kind.name in ("float", "float range"):
        return "float"
    return "text"


def value_of(param: click.Parameter) -> st.SearchStrategy[str]:
    kind = type_of(param)
    if kind == "choice":
        return st.one_of(st.sampled_from([str(c) for c in param.type.choices]), hostile_text)  # type: ignore[attr-defined]
    if kind == "int":
        return st.one_of(hostile_int, hostile_text)
    if kind == "float":
        return st.one_of(hostile_float, hostile_text)
    return st.one_of(hostile_text, hostile_int)


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    path, command = draw(st.sampled_from(COMMANDS))
    args = list(path)
    for param in drawn(command):
        if isinstance(param, click.Argument):
            count = 1 if param.nargs == 1 else draw(st.integers(0 if not param.required else 1, 2))
            if param.required or draw(st.booleans()):
                args += [draw(value_of(param)) for _ in range(count)]
        elif isinstance(param, click.Option) and draw(st.booleans()):
            flag = flag_of(param)
            if param.is_flag:
                args.append(flag)
            else:
                args += [flag, draw(value_of(param))]
    return args + FIXED.get(path, [])


def drawn(command: click.Command) -> list[click.Parameter]:
    return [p for p in command.params if p.name not in NOT_DRAWN and not getattr(p, "hidden", False)]


def flag_of(option: click.Option) -> str:
    return option.opts[-1] if option.opts[-1].startswith("--") else option.opts[0]


@pytest.fixture
def out_dir(db: Store) -> Path:
    path = db.home / "out"
    path.mkdir(exist_ok=True)
    return path


@pytest.mark.timeout(900)
@settings(max_examples=250, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(args=command_lines())
def test_any_value_of_any_option_ends_in_exit_0_or_one_error_line(
        db: Store, out_dir: Path, args: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    promise_kept(db, out_dir, args, monkeypatch, capsys)


def promise_kept(db: Store, out_dir: Path, args: list[str], monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> None:
    if any(a == "-" for a in args):  # stdin: the test has none to give
        return
    outs = {"export": ["--out", str(out_dir / "export.jsonl")], "generate": ["--out", str(out_dir / "gen.jsonl")]}
    args = args + outs.get(args[0], [])
    out, err, code = run_cli(db, args, None, monkeypatch, capsys)
    assert "Traceback" not in out + err, (args, err)
    assert code in (0, 2), (args, code, err)
    if code == 2:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert last.startswith("error: ") or "Usage:" in err, (args, err)


EDGES = {"int": [str(v) for v in INT_EDGES], "float": FLOAT_EDGES, "text": TEXT_EDGES, "choice": TEXT_EDGES[:1]}
BENIGN = {"int": "1", "float": "1.0", "text": "x"}
# Values that let a command get past its first argument, so the edge values of the others are reached.
BENIGN_BY_NAME = {"kind": "probe", "table_name": "predictions", "run_a": "1:sc", "run_b": "2:sc", "view": "chains",
                  "dataset": "d", "teacher": "t", "name": "n"}
EXTRA_EDGES = {"run_a": [f"{2**63}:sc", "1:sc:x"], "run_b": [f"{2**63}:sc"], "params": [f"priority={2**63}", "lr=inf"]}


def sweep(path: tuple[str, ...], command: click.Command) -> Iterator[list[str]]:
    """Every edge value of every drawn parameter, one at a time, the command's required arguments benign."""
    params = drawn(command)

    def benign(param: click.Parameter) -> str:
        kind = type_of(param)
        if kind == "choice":
            return str(param.type.choices[0])  # type: ignore[attr-defined]
        return BENIGN_BY_NAME.get(param.name or "", BENIGN[kind]) if kind == "text" else BENIGN[kind]

    for i, param in enumerate(params):
        if isinstance(param, click.Option) and param.is_flag:
            continue
        for edge in EDGES[type_of(param)] + EXTRA_EDGES.get(param.name or "", []):
            args = list(path)
            for j, other in enumerate(params):
                value = edge if i == j else (benign(other) if other.required else None)
                if value is None:
                    continue
                args += [value] if isinstance(other, click.Argument) else [flag_of(other), value]  # type: ignore[arg-type]
            yield args + FIXED.get(path, [])


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_edge_value_of_every_option_ends_in_exit_0_or_one_error_line(
        db: Store, out_dir: Path, path: tuple[str, ...], command: click.Command, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    broken = []
    for args in sweep(path, command):
        try:
            promise_kept(db, out_dir, args, monkeypatch, capsys)
        except Exception as exc:  # every broken promise of the command at once, not the first
            broken.append(f"{args}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    assert not broken, "\n".join(broken)
