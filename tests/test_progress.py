"""rplat.progress: a plain line every interval when stderr is not a terminal, a redrawn line with an ETA on one."""

from __future__ import annotations

import io

import pytest

from rplat.progress import Progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_a_plain_line_per_interval_with_the_total_and_an_eta() -> None:
    out = io.StringIO()
    with Progress("import documents", total=100, unit="documents", stream=out, every=0.0) as progress:
        progress.advance(40)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("import documents: 40/100 documents (40%), ")
    assert "ETA " in lines[0]
    assert "\r" not in out.getvalue()


def test_nothing_is_written_before_the_interval_or_when_quiet() -> None:
    out = io.StringIO()
    progress = Progress("export", stream=out, every=3600.0)
    progress.advance(5)
    quiet = Progress("export", stream=out, every=0.0, quiet=True)
    quiet.advance(5)
    assert out.getvalue() == ""
    assert progress.done == quiet.done == 5


def test_an_unknown_total_shows_the_count_and_the_elapsed_time() -> None:
    out = io.StringIO()
    Progress("import chains", unit="chains", stream=out, every=0.0).advance(1234)
    assert out.getvalue().startswith("import chains: 1,234 chains, ")
    assert "elapsed" in out.getvalue()


def test_a_terminal_gets_one_redrawn_line_cleared_on_close() -> None:
    out = _Tty()
    with Progress("import", total=10, stream=out, every=0.0) as progress:
        progress.advance(3)
        progress.advance(3)
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 3
    assert "\n" not in text


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPLAT_PROGRESS_SECONDS", "0.5")
    assert Progress("x", stream=io.StringIO()).every == 0.5
