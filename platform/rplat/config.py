"""Where rplat keeps its database and artefacts: RPLAT_HOME and RPLAT_DATABASE_URL."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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


def get_settings() -> Settings:
    home = Path(os.environ.get("RPLAT_HOME", "./.rplat")).expanduser().resolve()
    url = os.environ.get("RPLAT_DATABASE_URL") or f"sqlite:///{home / 'rplat.db'}"
    retry = float(os.environ.get("RPLAT_RETRY_BASE_SECONDS", "5"))
    return Settings(home=home, database_url=url, retry_base_seconds=retry)
