"""Pipelines: a method's DAG of jobs enqueued in one transaction, each after the jobs it reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rplat import kinds
from rplat.methods.guided import GUIDED, SOLVE_METHODS
from rplat.queue import Queue
from rplat.store import transaction


@dataclass
class RationalystPipeline:
    """prefilter -> extract -> score -> train -> solve x methods -> evaluate (baselines need not wait for training)."""

    documents: str
    benchmark: str
    model: str
    test: str | None = None
    experiment: str | None = None
    methods: tuple[str, ...] = SOLVE_METHODS
    limit: int | None = None
    extract_limit: int | None = None
    extract_mode: str = "rewrite"
    train_steps: int | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def adapter_name(self) -> str:
        return f"{self.experiment or 'pipeline'}-rationalyst"

    def enqueue(self, queue: Queue) -> dict[str, Any]:
        """Enqueue every job (identical re-runs de-duplicate to the same jobs); returns their ids by stage."""
        def params(kind: str, values: dict[str, Any]) -> dict[str, Any]:
            merged = {k: v for k, v in {**values, **self.overrides.get(kind, {})}.items() if v is not None}
            return kinds.validate_params(kind, merged)

        ids: dict[str, Any] = {"solve": {}, "evaluate": {}}
        with transaction(queue.engine) as s:
            def add(kind: str, values: dict[str, Any], after: list[int]) -> int:
                job_id, _ = queue.enqueue_in(s, kind, params(kind, values), experiment=self.experiment, after=after)
                return job_id

            ids["prefilter"] = add("prefilter", {"documents": self.documents, "reference": [self.benchmark]}, [])
            ids["extract"] = add("extract-rationales", {
                "prefilter_job": ids["prefilter"], "problems": self.benchmark, "model": self.model,
                "mode": self.extract_mode, "limit": self.extract_limit}, [ids["prefilter"]])
            ids["score"] = add("score-rationales", {"extract_job": ids["extract"], "model": self.model},
                               [ids["extract"]])
            ids["train"] = add("train-rationalyst", {"score_job": ids["score"], "model": self.model,
                                                     "adapter_name": self.adapter_name(),
                                                     "max_steps": self.train_steps}, [ids["score"]])
            for method in self.methods:
                guided = method in GUIDED
                solve = add("solve", {
                    "problems": self.test or self.benchmark, "fewshot": self.benchmark, "model": self.model,
                    "method": method, "rationalyst": self.adapter_name() if guided else None, "limit": self.limit},
                    [ids["train"]] if guided else [])
                ids["solve"][method] = solve
                ids["evaluate"][method] = add("evaluate", {"solve_job": solve}, [solve])
        return ids
