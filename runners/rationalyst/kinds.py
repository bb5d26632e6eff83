"""RATIONALYST's job kinds (A1-A6): parameter schemas and handler names (importing this loads no torch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from rplat.kinds import JobKind, Params, Was
from rplat.methods.guided import GUIDED, SolveMethod
from rplat.methods.leaks import LEAK_THRESHOLD
from rplat.references import CAUSAL_LM, Makes, Ref
from rplat.registry import BUNDLED_EMBEDDER
from rplat.runners.params import (
    Epochs,
    FineTuneParams,
    GradAccum,
    LearningRate,
    MaxLength,
    MicroBatch,
    ModelParams,
    Seed,
)


class PrefilterParams(Params):
    documents: Annotated[str, Ref("dataset", kind="documents")] = Field(
        description="name of the imported document dataset to score")
    reference: Annotated[list[str], Ref("dataset", kind="problems")] = Field(
        min_length=1, description="problem datasets whose worked solutions form the reference")
    threshold: float = Field(0.3, ge=-1, le=1, description="keep iff cosine to the reference centroid >= threshold")
    max_chars: int | None = Field(2000, gt=0, description="documents longer than this (characters) are not "
                                  "embedded and never pass (the paper's cut before embedding)")
    subsets: list[str] | None = Field(None, min_length=1, description="only documents whose subset is one of "
                                      "these (e.g. the Pile's \"ArXiv\", \"FreeLaw\"); the rest are not embedded")
    limit: int | None = Field(None, gt=0, description="at most this many documents: the first in import order "
                              "among those within max_chars and subsets")
    batch_size: int = Field(64, gt=0, le=4096, description="documents embedded and written per batch")
    embed_model: Annotated[str, Ref("model", primary=True, formats=("embedding",))] = Field(
        BUNDLED_EMBEDDER, description="registered embedding model")
    preprocess: bool = Field(True, description="lowercase, strip punctuation and stopwords before embedding")


class ExtractParams(ModelParams):
    documents: Annotated[str | None, Ref("dataset", kind="documents")] = Field(
        None, description="document dataset to annotate")
    prefilter_job: Annotated[int | None, Ref("job", kind="prefilter", of="documents")] = Field(
        None, description="only documents that passed this prefilter job (of `documents`, when both are given)")
    problems: Annotated[str | None, Ref("dataset", kind="problems")] = Field(
        None, description="problem dataset whose worked solutions to annotate")
    temperature: float = Field(0.0, ge=0, description="extractor sampling temperature (reference: 0)")
    max_tokens: int = Field(512, gt=0, description="extractor output budget (reference: 3000)")
    seed: int = Field(14, description="sampling seed (reference: 14)")
    min_fidelity: float = Field(0.9, ge=0, le=1, description="keep an extraction iff 1 - ED/len >= this")
    mode: Literal["rewrite", "insert"] = Field(
        "rewrite", description="rewrite: the model rewrites the text with <BOT>r<EOT> inserted (the paper's); "
        "insert: one rationale generated per unit boundary, text kept verbatim (robust for small models)")
    max_units: int = Field(12, gt=1, description="insert mode: at most this many units (lines/sentences) per text")

    def prompt_templates(self) -> tuple[str, ...]:
        if self.mode == "insert":
            return ("extract-insert",)
        documents = ("extract-pile",) if self.documents is not None or self.prefilter_job is not None else ()
        return documents + (("extract-reasoning",) if self.problems is not None else ())


class ScoreParams(ModelParams):
    extract_rationales_job: Annotated[int, Ref("job", kind="extract-rationales"), Was("extract_job")] = Field(
        description="the extract-rationales job whose rationales to score")
    gamma: float = Field(0.9, gt=0, le=1, description="discount of the following tokens")
    tau: float = Field(0.0, description="keep iff loss delta >= tau (sources without their own tau)")
    tau_by_source: dict[str, float] = Field(default_factory=dict,
                                            description='per-source tau, e.g. {"gsm8k": 1.2, "ecqa": 0.5}')
    batch_size: int = Field(64, gt=0, le=1024,
                            description="rationales scored per model call (a document's share one encoding)")
    leak_threshold: float = Field(
        LEAK_THRESHOLD, gt=0, description="a rationale whose overlap with its following text (novel bigram "
        "containment, rplat.methods.leaks) is >= this is a leak and never kept; above 1 marks none")

    def prompt_templates(self) -> tuple[str, ...]:
        return ("score-future",)


def _rationalyst_format(params: Mapping[str, Any]) -> str:
    """A train-rationalyst job registers a LoRA, or with lora=False a fully fine-tuned model."""
    return "lora" if params.get("lora", True) else "base"


class TrainRationalystParams(FineTuneParams):
    """A5: preceding text -> rationale, with RATIONALYST's values of the loop's knobs (each description gives the
    reference script's value; it fully fine-tunes, where the default here is a LoRA)."""

    score_rationales_job: Annotated[int, Ref("job", kind="score-rationales"), Was("score_job")] = Field(
        description="the score-rationales job whose kept rationales to train on")
    adapter_name: Annotated[str | None, Makes("rationalyst-job{job_id}", format=_rationalyst_format,
                                              role="rationalyst")] = Field(
        None, description="registry name of the result (default rationalyst-job<ID>)")
    lora: bool = Field(True, description="train a LoRA adapter (False: full fine-tune)")
    eval_fraction: float = Field(0.05, ge=0, lt=1)
    eval_every: int | None = Field(50, gt=0, description="eval loss on the held-out split every this many steps "
                                   "(and after the last one) into training_metrics.extra")
    epochs: Epochs = Field(3, description="passes over the rationales (reference: 20)")
    lr: LearningRate = Field(2e-4, description="reference full fine-tune: 2e-5; LoRA wants larger")
    batch_size: MicroBatch = Field(2, description="micro batch (reference: 2 per GPU)")
    grad_accum: GradAccum = Field(4, description="reference: 8 (x 2 GPUs x 2 = 32)")
    max_length: MaxLength = Field(1024, description="tokens per example (reference model_max_length 1024)")
    seed: Seed = Field(0, description="split, initialisation and shuffling seed")


class SolveParams(ModelParams):
    problems: Annotated[str, Ref("dataset", kind="problems")] = Field(description="problem dataset to solve")
    method: SolveMethod = Field("greedy", description="how each next step is chosen")
    rationalyst: Annotated[str | None, Ref("model", formats=CAUSAL_LM)] = Field(
        None, description="rationale model (adapter) for rationalyst-* methods")
    scorer: Annotated[str | None, Ref("model", formats=CAUSAL_LM)] = Field(
        None, description="scorer LM for rationalyst-implicit (default: the agent model)")
    fewshot: Annotated[str | None, Ref("dataset", kind="problems")] = Field(
        None, description="problem dataset whose worked solutions are the demonstrations")
    n_fewshot: int = Field(4, ge=0, description="demonstrations drawn from `fewshot` (reference GSM8K: 9)")
    n_candidates: int = Field(3, gt=0, description="candidate next steps per step (reference: 3)")
    n_samples: int = Field(8, gt=0, description="independent trajectories per problem for method=sc")
    temperature: float = Field(0.7, ge=0, description="candidate sampling temperature (reference: 0.7)")
    max_solve_steps: Annotated[int, Was("max_steps")] = Field(
        15, gt=0, description="solution steps before giving up (reference: 15); max_steps caps optimizer steps")
    step_tokens: int = Field(64, gt=0, description="token budget of one step")
    rationale_tokens: int = Field(64, gt=0, description="token budget of one rationale")
    seed: int = Field(14)

    @model_validator(mode="before")
    @classmethod
    def _old_method_names(cls, data: Any) -> Any:
        # Jobs stored before self-consistency took its papers' name `sc` say "sample"; they must still load.
        if isinstance(data, dict) and data.get("method") == "sample":
            return {**data, "method": "sc"}
        return data

    @model_validator(mode="after")
    def _needs_rationalyst(self) -> SolveParams:
        if self.method in GUIDED and not self.rationalyst:
            raise ValueError(f"method {self.method} needs a rationalyst model (--param rationalyst=NAME)")
        return self

    def prompt_templates(self) -> tuple[str, ...]:
        return ("agent-gsm8k", "implicit-scorer") if self.method == "rationalyst-implicit" else ("agent-gsm8k",)


PREFILTER = JobKind("prefilter", PrefilterParams, "rplat.runners.rationalyst.prefilter:run",
                    "Score documents by similarity to a benchmark's reference centroid (RATIONALYST A1).")
EXTRACT = JobKind("extract-rationales", ExtractParams, "rplat.runners.rationalyst.mining:extract",
                  "Insert implicit rationales with an LLM, check fidelity, split into triples (RATIONALYST A2/A3).")
SCORE = JobKind("score-rationales", ScoreParams, "rplat.runners.rationalyst.mining:score",
                "Loss delta of each rationale; keep those that make the following text likelier (RATIONALYST A4).")
TRAIN_RATIONALYST = JobKind("train-rationalyst", TrainRationalystParams, "rplat.runners.rationalyst.train:run",
                            "Fine-tune a rationale model: preceding text -> rationale, loss on the rationale (A5).",
                            reads_reviews=True)
SOLVE = JobKind("solve", SolveParams, "rplat.runners.rationalyst.solve:run",
                "Solve problems step by step: greedy, sc (self-consistency), random candidate, "
                "RATIONALYST-guided (A6).", reads_reviews=True)

KINDS = [PREFILTER, EXTRACT, SCORE, TRAIN_RATIONALYST, SOLVE]
