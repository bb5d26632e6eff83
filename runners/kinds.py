"""The built-in job kinds: each one's parameter schema and handler name (light: importing this loads no torch)."""

from __future__ import annotations

from pydantic import Field

from rplat.kinds import JobKind, Params
from rplat.registry import BUNDLED_EMBEDDER


class ProbeParams(Params):
    target: str | None = Field(None, description="host name the operator expects to run this probe (informational)")
    sleep_seconds: float = Field(0.0, ge=0, description="stay busy this long (sleeping), checking for cancellation")
    burn_seconds: float = Field(0.0, ge=0, description="stay busy this long on the CPU, to measure it or test leases")
    tag: str | None = Field(None, description="free text recorded in the result, e.g. to tell probes apart")
    devices: bool = Field(True, description="list torch devices (imports torch; off for queue benchmarks)")


class PrefilterParams(Params):
    documents: str = Field(description="name of the imported document dataset to score")
    reference: list[str] = Field(min_length=1, description="problem datasets whose worked solutions form the reference")
    threshold: float = Field(0.3, ge=-1, le=1, description="keep iff cosine to the reference centroid >= threshold")
    max_chars: int | None = Field(2000, gt=0, description="documents longer than this (characters) never pass")
    batch_size: int = Field(64, gt=0, le=4096, description="documents embedded and written per batch")
    embed_model: str = Field(BUNDLED_EMBEDDER, description="registered embedding model")
    preprocess: bool = Field(True, description="lowercase, strip punctuation and stopwords before embedding")


PROBE = JobKind("probe", ProbeParams, "rplat.runners.probe:run",
                "Report a runner machine's host, devices, library versions and free disk.")
PREFILTER = JobKind("prefilter", PrefilterParams, "rplat.runners.prefilter:run",
                    "Score documents by similarity to a benchmark's reference centroid (RATIONALYST A1).")
