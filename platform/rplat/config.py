"""Where rplat keeps its database and artefacts: RPLAT_HOME and RPLAT_DATABASE_URL."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from rplat.errors import UserError


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    retry_base_seconds: float = 5.0

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def checkpoints(self) -> Path:
        return self.home / "checkpoints"


def _retry_base_seconds() -> float:
    raw = os.environ.get("RPLAT_RETRY_BASE_SECONDS", "5")
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UserError(f"RPLAT_RETRY_BASE_SECONDS {raw!r} is not a number of seconds; set it to e.g. 5 or unset it.")
    return value


def get_settings() -> Settings:
    home = Path(os.environ.get("RPLAT_HOME", "./.rplat")).expanduser().resolve()
    url = os.environ.get("RPLAT_DATABASE_URL") or f"sqlite:///{home / 'rplat.db'}"
    return Settings(home=home, database_url=url, retry_base_seconds=_retry_base_seconds())
