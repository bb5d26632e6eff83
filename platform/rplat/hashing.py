"""Content hashes: one canonical JSON encoding for stored content, one streaming sha256 for files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 1 << 20


def content_hash(*parts: Any) -> str:
    """sha256 of the parts' canonical JSON (a list, sorted keys, no spaces, UTF-8 unescaped): the key of prompt
    templates, job dedupe, imported documents and problems, and the generation cache."""
    payload = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def file_blocks(path: Path) -> Iterator[bytes]:
    """A file's bytes in blocks, so hashing a multi-gigabyte checkpoint never holds it in memory."""
    with path.open("rb") as fh:
        yield from iter(lambda: fh.read(BLOCK), b"")


def file_sha256(path: Path) -> str:
    """What `sha256sum` prints for the file."""
    digest = hashlib.sha256()
    for block in file_blocks(path):
        digest.update(block)
    return digest.hexdigest()
