"""Records from any source rplat imports from, streamed: the one way an import reads its input.

    from rplat.imports.readers import open_source, dotted

    source = open_source("pile/")                 # a file, a directory of shards, "-" (stdin), a named pipe,
    for unit in source.units:                     # or a Hugging Face `save_to_disk` directory
        print(unit.name, unit.size, unit.sha256())
        for where, record in unit.records():      # where: "pile/00.jsonl.zst line 7" (str(where))
            subset = dotted(record, "meta.pile_set_name")

What `open_source(spec)` accepts:

- a file ending in `.jsonl` or `.json` (one JSON object per line), `.jsonl.gz` / `.json.gz` (gzip) or
  `.jsonl.zst` / `.json.zst` (Zstandard, several frames allowed): decompressed while read, a line at a time;
- a `.parquet` file: read a record batch at a time (never the whole table);
- `-`: standard input, and a named pipe (FIFO) of any name: JSONL, gzip or Zstandard told apart by their first
  bytes (a stream cannot be Parquet, which needs to seek);
- a Hugging Face `datasets` directory written by `Dataset.save_to_disk` (or `DatasetDict.save_to_disk`: one
  unit per split), read with the `datasets` package's own `load_from_disk` (memory-mapped Arrow) and iterated in
  batches;
- a directory of shards: every file in it (not below it) with one of the suffixes above is a unit, in name order;
  a hidden file (`.name`) is ignored, any other file is an error, so no shard is skipped silently.

A `Source` has `units`, each a `Unit` with `name` (the path, `<stdin>`, or `dir[split]`), `path` (None for a
stream), `size` (bytes to read, None when unknown; for progress) and `sha256()`: a file's is computed from
the file when asked (one sequential read); a stream's is computed while it is read, so ask after its
records are exhausted. `Unit.records()` yields `(where, record)`: `where` is a `Where` (file, `line`/`row`,
number; `str(where)` is e.g. `data.jsonl line 7`), record a dict. A line that is not one JSON object in UTF-8
raises a one-sentence `UserError` naming the file and line; a path that does not exist, has a suffix not listed
above, or is not readable raises one naming what is accepted. `Unit.bytes_read()` tells how much of the
(compressed) input has been consumed, so a progress line can show a total and an ETA for files.

`dotted(record, "meta.pile_set_name")` reads a nested field (a key that itself contains the dots wins).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from rplat.errors import UserError
from rplat.hashing import file_sha256

ACCEPTED = (".jsonl, .json, .jsonl.gz, .jsonl.zst, .parquet, a directory of such shards, a Hugging Face "
            "save_to_disk directory, or - for standard input")
_JSONL = (".jsonl", ".json")
_GZIP = (".jsonl.gz", ".json.gz")
_ZSTD = (".jsonl.zst", ".json.zst", ".jsonl.zstd")
_SUFFIXES = (*_JSONL, *_GZIP, *_ZSTD, ".parquet")
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PARQUET_MAGIC = b"PAR1"
READ_BLOCK = 1 << 20
PARQUET_BATCH = 4096
HF_BATCH = 1000


class Where(NamedTuple):
    """Where a record came from: `file line N` (JSONL) or `file row N` (Parquet, Hugging Face), numbered from 1."""

    file: str
    unit: str
    number: int

    def __str__(self) -> str:
        return f"{self.file} {self.unit} {self.number}"


_MISSING = object()


def getter(path: str) -> Callable[[dict[str, Any]], Any]:
    """A function reading `path` (dotted) from a record, None where absent: `dotted` with the path parsed once."""
    if "." not in path:
        return lambda record: record.get(path)
    parts = path.split(".")

    def get(record: dict[str, Any]) -> Any:
        value = record.get(path, _MISSING)
        if value is not _MISSING:
            return value
        current: Any = record
        for part in parts:
            if not isinstance(current, dict):
                return None
            current = current.get(part)
        return current

    return get


def dotted(record: dict[str, Any], path: str, default: Any = None) -> Any:
    """`record["meta"]["pile_set_name"]` for path `meta.pile_set_name`; `default` where any step is absent or
    not an object. A key that itself contains the dots (`{"meta.x": 1}`) is taken as it is."""
    value = record.get(path, _MISSING)
    if value is not _MISSING:
        return value
    if "." not in path:
        return default
    current: Any = record
    for part in path.split("."):
        if not isinstance(current, dict):
            return default
        current = current.get(part, _MISSING)
        if current is _MISSING:
            return default
    return current


def jsonl_records(lines: Iterable[bytes], name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of JSONL; a line that is not one JSON object in UTF-8 is one
    sentence naming `name` (the file) and the line."""
    loads = json.loads
    for lineno, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{name} line {lineno} is not valid UTF-8 (byte {exc.start + 1} of the line); "
                            "re-encode the file as UTF-8.") from None
        try:
            record = loads(line)
        except json.JSONDecodeError as exc:
            if line.isspace() or not line:
                continue
            raise UserError(f"{name} line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}); "
                            "fix or remove that line.") from None
        except ValueError as exc:  # an integer of over 4,300 digits (Python's int/str conversion limit)
            raise UserError(f"{name} line {lineno} cannot be read ({exc}); write such a number as a string, "
                            "or fix or remove that line.") from None
        if not isinstance(record, dict):
            raise UserError(f"{name} line {lineno} is a JSON {type(record).__name__}, not an object; "
                            "each line must be one JSON object.")
        yield lineno, record


class _Counting(io.RawIOBase):
    """A raw binary stream that counts (and optionally hashes) the bytes read through it."""

    def __init__(self, inner: IO[bytes], digest: Any | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.digest = digest
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        if self.digest is not None:
            self.digest.update(data)
        return n


class _Zstd(io.RawIOBase):
    """Zstandard frames (one or several, as pzstd writes) decompressed from a raw stream; a stream that ends
    inside a frame raises EOFError rather than passing for a shorter file."""

    def __init__(self, inner: IO[bytes]) -> None:
        import zstandard

        super().__init__()
        self.inner = inner
        self.dctx = zstandard.ZstdDecompressor()
        self.dobj = self.dctx.decompressobj()
        self.pending = b""
        self.pos = 0
        self.in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            chunk = self.inner.read(READ_BLOCK)
            if not chunk:
                if self.in_frame:
                    raise EOFError("the input ended inside a Zstandard frame")
                return 0
            while chunk:
                self.in_frame = True
                self.pending += self.dobj.decompress(chunk)
                chunk = b""
                if self.dobj.eof:
                    chunk = self.dobj.unused_data
                    self.dobj = self.dctx.decompressobj()
                    self.in_frame = False
        n = min(len(buffer), len(self.pending) - self.pos)
        buffer[:n] = self.pending[self.pos:self.pos + n]
        self.pos += n
        if self.pos == len(self.pending):
            self.pending, self.pos = b"", 0
        return n


def _decompressed(raw: IO[bytes], codec: str) -> IO[bytes]:
    """A buffered line-iterable binary stream of `raw`'s content after `codec` (plain, gzip or zstd)."""
    if codec == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if codec == "zstd":
        return io.BufferedReader(_Zstd(raw), buffer_size=READ_BLOCK)
    return io.BufferedReader(raw, buffer_size=READ_BLOCK)  # type: ignore[arg-type]


def _codec_of_name(name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(_GZIP):
        return "gzip"
    if lower.endswith(_ZSTD):
        return "zstd"
    if lower.endswith(_JSONL):
        return "plain"
    if lower.endswith(".parquet"):
        return "parquet"
    return None


def _codec_of_magic(head: bytes, name: str) -> str:
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    if head.startswith(_PARQUET_MAGIC):
        raise UserError(f"{name} is Parquet, which cannot be read from a stream; write it to a .parquet file and "
                        "import that.")
    return "plain"


def _reason(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0].split(". ")[0].rstrip(".") if str(exc).strip() else type(exc).__name__


@dataclass
class Unit:
    """One unit of a source (a file, a shard, a stream, a split): imported as one transaction."""

    name: str
    path: Path | None
    codec: str  # plain, gzip, zstd, parquet, hf
    size: int | None = None
    _open_stream: Callable[[], IO[bytes]] | None = None
    _hf: Any = None
    _counter: _Counting | None = field(default=None, repr=False)
    _digest: Any = field(default=None, repr=False)
    _sha256: str | None = field(default=None, repr=False)
    _rows_done: int = field(default=0, repr=False)
    _finished: bool = field(default=False, repr=False)

    @property
    def unit_word(self) -> str:
        return "row" if self.codec in ("parquet", "hf") else "line"

    def sha256(self) -> str | None:
        """The sha256 of the unit's bytes (a file: computed now, once; a stream: known once it has been read,
        None before; a Hugging Face split: of its Arrow files in order)."""
        if self._sha256 is not None:
            return self._sha256
        if self.path is not None and self.codec != "hf":
            self._sha256 = file_sha256(self.path)
        elif self.codec == "hf":
            digest = hashlib.sha256()
            for f in self._hf_files():
                digest.update(file_sha256(f).encode())
            self._sha256 = digest.hexdigest()
        elif self._digest is not None and self._finished:
            self._sha256 = self._digest.hexdigest()
        return self._sha256

    def _hf_files(self) -> list[Path]:
        return [Path(entry["filename"]) for entry in getattr(self._hf, "cache_files", [])]

    def bytes_read(self) -> int:
        """Bytes of the input consumed so far (compressed bytes for a compressed file; rows for Parquet and
        Hugging Face, whose `size` is then a row count)."""
        if self.codec in ("parquet", "hf"):
            return self._rows_done
        return self._counter.count if self._counter is not None else 0

    def records(self) -> Iterator[tuple[Where, dict[str, Any]]]:
        """(where, record) for every record of the unit, streamed."""
        if self.codec == "parquet":
            yield from self._parquet()
        elif self.codec == "hf":
            yield from self._hf_rows()
        else:
            yield from self._jsonl()

    def _jsonl(self) -> Iterator[tuple[Where, dict[str, Any]]]:
        if self._open_stream is not None:
            raw: IO[bytes] = self._open_stream()
            self._digest = hashlib.sha256()
        else:
            assert self.path is not None
            try:
                raw = self.path.open("rb")
            except OSError as exc:
                raise UserError(f"{self.path} cannot be read ({exc.strerror}); check the path and its "
                                "permissions.") from None
        counter = _Counting(raw, self._digest)
        self._counter = counter
        codec = self.codec
        if codec == "detect":
            head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
            codec = _codec_of_magic(head, self.name)
        stream = _decompressed(counter, codec)
        lines: Iterator[bytes] = iter(stream)
        try:
            for lineno, record in jsonl_records(_guarded(lines, self.name, codec), self.name):
                yield Where(self.name, "line", lineno), record
            self._finished = True
        finally:
            stream.close()
            counter.close()
            if self._open_stream is None or raw is not sys.stdin.buffer:
                raw.close()

    def _parquet(self) -> Iterator[tuple[Where, dict[str, Any]]]:
        import pyarrow.parquet as pq

        assert self.path is not None
        try:
            pf = pq.ParquetFile(self.path)
            batches = pf.iter_batches(batch_size=PARQUET_BATCH)
            number = 0
            for batch in batches:
                for record in batch.to_pylist():
                    number += 1
                    self._rows_done = number
                    yield Where(self.name, "row", number), record
        except UserError:
            raise
        except Exception as exc:  # pyarrow raises several types; all mean "not readable Parquet"
            if isinstance(exc, GeneratorExit):
                raise
            raise UserError(f"{self.path} is not a readable Parquet file ({_reason(exc)}); check that it is "
                            "complete Parquet, or use JSONL.") from None

    def _hf_rows(self) -> Iterator[tuple[Where, dict[str, Any]]]:
        number = 0
        for batch in self._hf.iter(batch_size=HF_BATCH):
            names = list(batch)
            columns = [batch[n] for n in names]
            for values in zip(*columns, strict=True):
                number += 1
                self._rows_done = number
                yield Where(self.name, "row", number), dict(zip(names, values, strict=True))


def _guarded(lines: Iterator[bytes], name: str, codec: str) -> Iterator[bytes]:
    """The lines, with a corrupt or truncated compressed stream turned into one sentence."""
    try:
        yield from lines
    except (EOFError, OSError) as exc:
        what = {"gzip": "gzip", "zstd": "Zstandard"}.get(codec, "")
        if not what:
            raise UserError(f"{name} cannot be read ({_reason(exc)}); check the file.") from None
        raise UserError(f"{name} is not a complete {what} stream ({_reason(exc)}); re-download or re-compress "
                        "it.") from None
    except Exception as exc:
        if type(exc).__module__.startswith("zstandard") or "zstd" in type(exc).__name__.lower():
            raise UserError(f"{name} is not a complete Zstandard stream ({_reason(exc)}); re-download or "
                            "re-compress it.") from None
        raise


@dataclass
class Source:
    """What `open_source` found: its units in import order, and the spec it was opened with."""

    spec: str
    units: list[Unit]
    kind: str  # file, stream, shards, hf


def _file_unit(path: Path) -> Unit:
    codec = _codec_of_name(path.name)
    if codec is None:
        raise UserError(f"{path} has a suffix rplat cannot read; use {ACCEPTED}.")
    size = path.stat().st_size
    if codec == "parquet":
        import pyarrow.parquet as pq

        try:
            size = pq.ParquetFile(path).metadata.num_rows
        except Exception as exc:  # pyarrow raises several types; all mean "not readable Parquet"
            raise UserError(f"{path} is not a readable Parquet file ({_reason(exc)}); check that it is complete "
                            "Parquet, or use JSONL.") from None
    return Unit(name=str(path), path=path, codec=codec, size=size)


def _stream_unit(name: str, opener: Callable[[], IO[bytes]]) -> Unit:
    return Unit(name=name, path=None, codec="detect", _open_stream=opener)


def _is_hf_dir(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def _hf_units(path: Path) -> list[Unit]:
    try:
        from datasets import Dataset, DatasetDict, load_from_disk
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise UserError(f"{path} is a Hugging Face dataset directory, but the datasets package is not installed; "
                        "pip install datasets.") from None
    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:  # the loader raises several types; all mean "not a readable saved dataset"
        raise UserError(f"{path} is not a readable Hugging Face save_to_disk directory ({_reason(exc)}); "
                        "save it again with Dataset.save_to_disk.") from None
    parts: list[tuple[str, Any]]
    if isinstance(loaded, DatasetDict):
        parts = [(f"{path}[{split}]", ds) for split, ds in loaded.items()]
    elif isinstance(loaded, Dataset):
        parts = [(str(path), loaded)]
    else:  # pragma: no cover - load_from_disk returns one of the two
        raise UserError(f"{path} is not a Hugging Face Dataset or DatasetDict directory.")
    return [Unit(name=name, path=path, codec="hf", size=ds.num_rows, _hf=ds) for name, ds in parts]


def _shard_units(path: Path) -> list[Unit]:
    units = []
    for child in sorted(path.iterdir(), key=lambda p: p.name):
        if child.name.startswith(".") or child.is_dir():
            continue
        if _codec_of_name(child.name) is None:
            raise UserError(f"{child} in the shard directory {path} has a suffix rplat cannot read; move it out "
                            f"or rename it (shards: .jsonl, .jsonl.gz, .jsonl.zst or .parquet).")
        units.append(_file_unit(child))
    if not units:
        raise UserError(f"{path} holds no shards; a directory must hold .jsonl, .jsonl.gz, .jsonl.zst or .parquet "
                        "files, or be a Hugging Face save_to_disk directory.")
    return units


def open_source(spec: str) -> Source:
    """The units of `spec` (see the module docstring); raises a one-sentence UserError if it cannot be read."""
    if spec == "-":
        return Source(spec, [_stream_unit("<stdin>", lambda: sys.stdin.buffer)], "stream")
    path = Path(spec)
    try:
        mode = path.stat().st_mode
    except OSError:
        raise UserError(f"{spec} does not exist; give {ACCEPTED}.") from None
    if stat.S_ISFIFO(mode):
        def opener() -> IO[bytes]:
            return open(path, "rb", buffering=READ_BLOCK)  # noqa: SIM115 - closed by Unit._jsonl

        return Source(spec, [_stream_unit(str(path), opener)], "stream")
    if stat.S_ISDIR(mode):
        if _is_hf_dir(path):
            return Source(spec, _hf_units(path), "hf")
        return Source(spec, _shard_units(path), "shards")
    if not stat.S_ISREG(mode):
        raise UserError(f"{spec} is neither a file, a directory nor a pipe; give {ACCEPTED}.")
    if not os.access(path, os.R_OK):
        raise UserError(f"{spec} cannot be read (permission denied); check its permissions.")
    return Source(spec, [_file_unit(path)], "file")
