"""rplat.imports.readers: every accepted source streams the same records, with file and line in errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import zstandard

from rplat.errors import UserError
from rplat.imports.readers import dotted, open_source

RECORDS = [{"id": f"d{i}", "text": f"text {i}", "meta": {"pile_set_name": "Pile-CC" if i % 2 else "Wikipedia"}}
           for i in range(7)]
PAYLOAD = "".join(json.dumps(r) + "\n" for r in RECORDS).encode()


def _all(spec: str) -> list[dict[str, object]]:
    return [record for unit in open_source(spec).units for _where, record in unit.records()]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".jsonl.gz", ".jsonl.zst", ".parquet"])
def test_each_file_format_streams_the_same_records(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"docs{suffix}"
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(RECORDS), path, row_group_size=3)
    elif suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(PAYLOAD))
    elif suffix.endswith(".zst"):
        path.write_bytes(zstandard.ZstdCompressor().compress(PAYLOAD))
    else:
        path.write_bytes(PAYLOAD)
    source = open_source(str(path))
    (unit,) = source.units
    pairs = list(unit.records())
    assert [r for _w, r in pairs] == RECORDS
    assert str(pairs[2][0]) == f"{path} {'row' if suffix == '.parquet' else 'line'} 3"
    assert unit.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_zstd_of_several_frames_and_a_truncated_one(tmp_path: Path) -> None:
    comp = zstandard.ZstdCompressor()
    (tmp_path / "two.jsonl.zst").write_bytes(comp.compress(PAYLOAD) + comp.compress(PAYLOAD))
    assert len(_all(str(tmp_path / "two.jsonl.zst"))) == 2 * len(RECORDS)
    (tmp_path / "cut.jsonl.zst").write_bytes(comp.compress(PAYLOAD)[:-6])
    with pytest.raises(UserError, match=r"cut.jsonl.zst is not a complete Zstandard stream"):
        _all(str(tmp_path / "cut.jsonl.zst"))
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(PAYLOAD)[:-6])
    with pytest.raises(UserError, match=r"cut.jsonl.gz is not a complete gzip stream"):
        _all(str(tmp_path / "cut.jsonl.gz"))


def test_a_bad_line_names_file_and_line_inside_a_compressed_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(gzip.compress(PAYLOAD + b"{not json\n"))
    with pytest.raises(UserError, match=rf"^{path} line 8 is not valid JSON"):
        _all(str(path))


def test_shard_directory_is_units_in_name_order(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(PAYLOAD[:PAYLOAD.index(b"\n") + 1]))
    (shards / "a.jsonl").write_bytes(PAYLOAD)
    (shards / ".hidden").write_text("ignored")
    source = open_source(str(shards))
    assert source.kind == "shards"
    assert [Path(u.name).name for u in source.units] == ["a.jsonl", "b.jsonl.zst"]
    assert len(_all(str(shards))) == len(RECORDS) + 1
    (shards / "README.txt").write_text("x")
    with pytest.raises(UserError, match=r"README.txt in the shard directory .* cannot read; move it out"):
        open_source(str(shards))


def test_stdin_detects_compression(tmp_path: Path) -> None:
    script = ("from rplat.imports.readers import open_source\n"
              "u = open_source('-').units[0]\n"
              "print(len(list(u.records())), u.sha256())\n")
    for payload in (PAYLOAD, gzip.compress(PAYLOAD), zstandard.ZstdCompressor().compress(PAYLOAD)):
        out = subprocess.run([sys.executable, "-c", script], input=payload, capture_output=True, check=True)
        assert out.stdout.decode().split() == [str(len(RECORDS)), hashlib.sha256(payload).hexdigest()]


def test_named_pipe(tmp_path: Path) -> None:
    fifo = tmp_path / "feed"
    os.mkfifo(fifo)
    payload = zstandard.ZstdCompressor().compress(PAYLOAD)
    writer = threading.Thread(target=fifo.write_bytes, args=(payload,))
    writer.start()
    source = open_source(str(fifo))
    assert source.kind == "stream"
    (unit,) = source.units
    assert unit.sha256() is None  # a stream's hash is known once it has been read
    assert [r for _w, r in unit.records()] == RECORDS
    writer.join()
    assert unit.sha256() == hashlib.sha256(payload).hexdigest()


def test_hugging_face_save_to_disk(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_list(RECORDS).save_to_disk(str(tmp_path / "hf"))
    source = open_source(str(tmp_path / "hf"))
    assert source.kind == "hf"
    assert _all(str(tmp_path / "hf")) == RECORDS
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:4]),
                          "test": datasets.Dataset.from_list(RECORDS[4:])}).save_to_disk(str(tmp_path / "hfd"))
    units = open_source(str(tmp_path / "hfd")).units
    assert sorted(u.name for u in units) == sorted([f"{tmp_path / 'hfd'}[train]", f"{tmp_path / 'hfd'}[test]"])
    assert sorted(json.dumps(r) for r in _all(str(tmp_path / "hfd"))) == sorted(json.dumps(r) for r in RECORDS)
    assert all(u.sha256() for u in units)


def test_unknown_or_missing_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match=r"x.csv has a suffix rplat cannot read; use .jsonl, .json, .jsonl.gz"):
        open_source(str(tmp_path / "x.csv"))
    with pytest.raises(UserError, match=r"missing.jsonl does not exist; give .jsonl"):
        open_source(str(tmp_path / "missing.jsonl"))


def test_dotted() -> None:
    record = {"meta": {"pile_set_name": "ArXiv", "n": {"deep": 3}}, "a.b": 1, "s": "x"}
    assert dotted(record, "meta.pile_set_name") == "ArXiv"
    assert dotted(record, "meta.n.deep") == 3
    assert dotted(record, "a.b") == 1
    assert dotted(record, "s.t") is None
    assert dotted(record, "meta.missing", "d") == "d"
