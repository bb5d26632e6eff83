"""Parameter bases the job families build on (importing this loads no torch)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rplat.bundled import SMOLLM2
from rplat.kinds import Params
from rplat.references import Ref


class ModelParams(Params):
    model: Annotated[str, Ref("model", primary=True)] = Field(
        SMOLLM2, description="registered model (the bundled SmolLM2 by default)")
    backend: str = Field("hf", pattern="^(hf|openai)$", description="hf (in-process) or openai (a server)")
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL, for backend=openai")
    batch_size: int = Field(8, gt=0, le=1024, description="items per model call and per committed batch")
    limit: int | None = Field(None, gt=0, description="process at most this many items (smoke runs)")
