"""Parameter bases the job families build on (importing this loads no torch).

`ModelParams` is for the kinds that run a model over items. `TrainParams` is the base of every training kind:
the knobs of the one training loop, which `train_config()` hands to it; `FineTuneParams` adds what training a
language model's LoRA takes (the student, the LoRA, the schedule, torchrun). The values the loop's knobs take
differ by paper, so the bases state what each knob means and its bounds, and each paper's params class states
its values once, as defaults whose descriptions say where they come from.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from rplat.bundled import SMOLLM2
from rplat.kinds import Params
from rplat.references import CAUSAL_LM, Ref
from rplat.runners.training.config import TrainConfig


class ModelParams(Params):
    model: Annotated[str, Ref("model", primary=True, formats=CAUSAL_LM)] = Field(
        SMOLLM2, description="registered causal LM, or an adapter on one (the bundled SmolLM2 by default)")
    backend: str = Field("hf", pattern="^(hf|openai)$", description="hf (in-process) or openai (a server)")
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL, for backend=openai")
    batch_size: int = Field(8, gt=0, le=1024, description="items per model call and per committed batch")
    limit: int | None = Field(None, gt=0, description="process at most this many items (smoke runs)")


# The loop's knobs whose values are each paper's: their meaning and bounds, which a paper's class keeps when it
# states its value (`lr: LearningRate = Field(3e-4, description=...)`).
Epochs = Annotated[int, Field(gt=0, description="passes over the training examples")]
LearningRate = Annotated[float, Field(gt=0, description="peak learning rate")]
MicroBatch = Annotated[int, Field(gt=0, description="examples per micro batch (per process)")]
GradAccum = Annotated[int, Field(gt=0, description="micro batches per optimizer step")]
MaxLength = Annotated[int, Field(gt=8, description="tokens per example (longer ones are cut)")]
Seed = Annotated[int, Field(description="initialisation and shuffling seed")]


class TrainParams(Params):
    """What every training kind sets for the one training loop; each paper's class gives the values."""

    epochs: Epochs
    lr: LearningRate
    batch_size: MicroBatch
    grad_accum: GradAccum
    max_length: MaxLength
    checkpoint_every: int = Field(50, gt=0, description="optimizer steps between checkpoints")
    seed: Seed
    report_to: Literal["mlflow", "wandb", "none"] | None = Field(
        None, description="log the params, every step's metrics and the trained model to MLflow or W&B (the "
        "rplat[mlflow] or rplat[wandb] extra); none: neither; unset: the runner's RPLAT_REPORT_TO, else neither")

    @model_serializer(mode="wrap")
    def _report_to_stored_when_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A job that does not say follows its runner's RPLAT_REPORT_TO: its stored params (and so its dedupe key)
        # stay what they were before report_to existed.
        data = handler(self)
        if self.report_to is None:
            data.pop("report_to", None)
        return data

    def train_config(self) -> TrainConfig:
        """The loop's configuration: every `TrainConfig` field these params have, by name (the loop's defaults
        for the rest)."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)
                              if f.name in type(self).model_fields})


class FineTuneParams(TrainParams):
    """Training a LoRA (the shared LoRA settings: r 8, alpha 16, dropout 0.05, q/v) on a language model, with a
    warmup, alone or on several processes under torchrun."""

    model: Annotated[str, Ref("model", primary=True, formats=("base",))] = Field(
        SMOLLM2, description="base model to fine-tune (a causal LM's own weights, not an adapter)")
    lora_r: int = Field(8, gt=0, description="LoRA rank")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA alpha (scaling alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input (0: runs with different "
                                "nproc give the same curve; with dropout each process draws its own masks)")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1,
                                      description="linear layers to adapt")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="warmup as a fraction of the optimizer steps")
    warmup_steps: int | None = Field(None, ge=0, description="warmup in optimizer steps (instead of warmup_ratio)")
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    nproc: int = Field(1, ge=1, le=64, description="processes training together under torchrun (one per GPU; "
                       "DDP, or FSDP with parallel=fsdp); batch_size x grad_accum stays the global batch")
    parallel: Literal["ddp", "fsdp"] = Field("ddp", description="with nproc > 1: ddp replicates the model in "
                                             "every process, fsdp shards it (for models one GPU cannot hold)")

    @model_validator(mode="after")
    def _one_warmup(self) -> FineTuneParams:
        # A stored job's params hold every field, the default warmup_ratio beside its warmup_steps included: only a
        # ratio other than the default contradicts the steps.
        ratio = type(self).model_fields["warmup_ratio"].default
        if self.warmup_steps is not None and self.warmup_ratio != ratio:
            raise ValueError("give warmup_steps or warmup_ratio, not both")
        return self

    def lora_config(self) -> Any:
        """The peft `LoraConfig` of these params (peft is imported on this call, never with the params)."""
        from peft import LoraConfig

        return LoraConfig(r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=list(self.target_modules), task_type="CAUSAL_LM")
