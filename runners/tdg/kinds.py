"""The Turning-Dust-into-Gold job kinds (B1-B6): parameter schemas, handler names and the training table.

Chains are named by their problem dataset and their `teacher` (the chain set: an imported teacher such as
gpt-3.5, or what collect-chains stored under the teacher model's name). Every training kind trains a LoRA (or
the NAT layer) on the student `model` and registers it under `adapter_name`; each is one row of `TRAINING`, which
the family's `KINDS`, the TDG pipeline, the TDG report and the training handlers read. Importing this loads no
torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from rplat.kinds import JobKind, Params, Was, resolve
from rplat.references import Makes, MakesChains, Need, Ref
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
    TrainParams,
)

LABELERS = ("hendrycks", "math-verify")
Labeler = Literal["hendrycks", "math-verify"]
# ASC's vote functions (B4): f0 = 1 (plain SC), f1 = 1 + 2s, f2 = 1 + s, f3 = s (the default)
VOTE_FUNCTIONS = ("f0", "f1", "f2", "f3")
VoteFunction = Literal["f0", "f1", "f2", "f3"]
# What a sample without an extracted answer does in a vote (B4): "vote" is the authors' protocol (one bucket of
# its own that can win or tie), "drop" gives it no vote (common self-consistency practice).
Unanswered = Literal["vote", "drop"]
UNANSWERED_HELP = ("samples without an answer: vote (one bucket of their own that can win or tie, the authors' "
                   "ASC protocol) or drop (no vote)")


class CollectChainsParams(ModelParams):
    """B1: n_samples chains per problem from a teacher, each labelled against the problem's gold answer."""

    problems: Annotated[str, Ref("dataset", kind="problems")] = Field(
        description="problem dataset (with gold answers) to collect chains for")
    teacher: Annotated[str | None, MakesChains(dataset="problems", default="model")] = Field(
        None, min_length=1, max_length=200, description="name of the chain set (default: the teacher model's name)")
    n_samples: Annotated[int, Was("n")] = Field(8, gt=0, le=256, description="chains per problem (reference: 8)")
    temperature: float = Field(0.5, ge=0, description="teacher sampling temperature (reference, inferred: 0.5)")
    max_tokens: int = Field(512, gt=0, description="token budget of one chain")
    fewshot: Annotated[str | None, Ref("dataset", kind="problems")] = Field(
        None, description="dataset whose worked solutions are the demonstrations (default: `problems`)")
    n_fewshot: int = Field(4, ge=0, description="demonstrations before each problem (never the problem itself)")
    labeler: Labeler = Field("hendrycks", description="which verdict is the chain's label (both are stored)")
    workers: int | None = Field(None, ge=1, description="labelling processes (default: one per core of the runner's "
                                "machine; 1 labels in the job's own process)")
    seed: int = Field(0, description="sampling seed of each batch's one call for its n_samples chains per problem "
                      "(a top-up to a larger n_samples draws the new chains with a seed of their own)")

    @model_validator(mode="after")
    def _sampled(self) -> CollectChainsParams:
        if self.temperature == 0 and self.n_samples > 1:
            raise ValueError("temperature 0 gives one chain per problem, n_samples times over; set n_samples=1 or a "
                             "temperature > 0")
        return self

    def prompt_templates(self) -> tuple[str, ...]:
        return ("tdg-chain",)


class TdgTrainParams(FineTuneParams):
    """What every TDG training kind shares: the chains, and TDG's values of the loop's knobs (each description
    gives the reference code's value; it also warms up for 200 steps, and its LoRA is FineTuneParams' default)."""

    problems: Annotated[str, Ref("dataset", kind="problems")] = Field(
        description="training problem dataset (its chains, or for train-sft its worked solutions)")
    teacher: str | None = Field(None, description="chain set to train on (teacher_chains.teacher); "
                                "not used by train-sft")
    adapter_name: str | None = Field(None, description="registry name of the result (default <setting>-job<ID>)")
    max_chars: int = Field(1600, gt=0, description="keep a chain iff len(training text) < max_chars "
                           "(reference: 1600 for Neg/NAT training, 1200 for NCE)")
    limit: int | None = Field(None, gt=0, description="train on the chains of at most this many problems")
    epochs: Epochs = Field(3, description="passes over the chains (reference: 20)")
    lr: LearningRate = Field(3e-4, description="peak learning rate (reference: 3e-4)")
    batch_size: MicroBatch = Field(4, description="micro batch (reference: 16)")
    grad_accum: GradAccum = Field(4, description="micro batches per optimizer step (reference: 128 / 16)")
    max_length: MaxLength = 512
    seed: Seed = Field(42, description="initialisation and shuffling seed (reference: 42)")

    def prompt_templates(self) -> tuple[str, ...]:
        return ("tdg-chain",)


class ChainTrainParams(TdgTrainParams):
    """A training kind that reads teacher chains: `teacher` is required, and names chains on `problems`."""

    teacher: Annotated[str | None, Ref("chains", dataset="problems")] = Field(
        None, description="chain set to train on (teacher_chains.teacher): chains stored on `problems`, or "
        "collected by a collect-chains job this one runs --after")

    @model_validator(mode="after")
    def _needs_teacher(self) -> ChainTrainParams:
        if self.teacher is None:
            raise ValueError("name the chains to train on with --param teacher=NAME (the teachers stored: "
                             "`rplat sql \"SELECT teacher, label, count(*) FROM chains GROUP BY ALL\"`)")
        return self


class TrainNegParams(ChainTrainParams):
    """B2 stage 1: the negative LoRA, plain MLE on the negative chains."""

    adapter_name: Annotated[str | None, Makes("neg-job{job_id}", format="lora", role="neg")] = None


class TrainKdParams(ChainTrainParams):
    """B5 CoT KD: MLE on the positive chains."""

    adapter_name: Annotated[str | None, Makes("kd-job{job_id}", format="lora", role="kd")] = None


class TrainMixParams(ChainTrainParams):
    """B5 MIX: MLE on positives and negatives alike."""

    adapter_name: Annotated[str | None, Makes("mix-job{job_id}", format="lora", role="mix")] = None


class TrainNtParams(ChainTrainParams):
    """B5 NT: +1 x log-likelihood of positives (and gold solutions), -lambda x that of negatives."""

    adapter_name: Annotated[str | None, Makes("nt-job{job_id}", format="lora", role="nt")] = None
    nt_lambda: float = Field(0.05, ge=0, description="weight of the negatives' likelihood, subtracted (reference 0.05)")
    include_gold: bool = Field(True, description="also train on the problems' gold solutions with weight +1 (code)")


class TrainUlParams(ChainTrainParams):
    """B5 UL: MLE on positives plus lambda x token unlikelihood -log(1 - p) on negatives."""

    adapter_name: Annotated[str | None, Makes("ul-job{job_id}", format="lora", role="ul")] = None
    ul_lambda: float = Field(0.05, ge=0, description="weight of the unlikelihood term (reference 0.05)")


class TrainSftParams(TdgTrainParams):
    """The paper's "fine-tune" row: MLE on the problems' gold solutions (the base of the relative gains)."""

    adapter_name: Annotated[str | None, Makes("sft-job{job_id}", format="lora", role="sft")] = None


class TrainNatParams(ChainTrainParams):
    """B2 stage 2: positive LoRA + dynamic integration unit on the positives, the negative LoRA frozen."""

    adapter_name: Annotated[str | None, Makes("nat-job{job_id}", format="nat", role="nat")] = None
    neg_model: Annotated[str, Ref("model", formats=("lora",), roles=("neg",))] = Field(
        description="the negative LoRA (a train-neg result) the NAT layer plugs in, frozen")
    unit_dim: int = Field(128, gt=0, description="width of W_Q, W_K, W_1 (reference: 128)")
    unit_beta: float = Field(0.5, gt=0, le=1, description="w_neg = 2*beta*a_neg - beta (reference 0.5)")
    log_every: int = Field(10, gt=0, description="optimizer steps between nat_w_neg rows (reference: 200)")


class TrainNceParams(ChainTrainParams):
    """B3: a fresh LoRA distilled from the NAT model, KD weighted per chain by beta = tanh(KL(neg || nat))."""

    adapter_name: Annotated[str | None, Makes("nce-job{job_id}", format="lora", role="nce")] = None
    nat_model: Annotated[str, Ref("model", formats=("nat",), roles=("nat",))] = Field(
        description="the NAT model (a train-nat result), frozen")
    max_chars: int = Field(1200, gt=0, description="keep a chain iff len(training text) < max_chars (reference 1200)")
    alpha: float = Field(0.5, ge=0, le=1, description="L = (1-alpha) CE + alpha KD (reference 0.5)")
    beta_offset: float = Field(0.5, ge=0, description="KD weight = beta_offset + beta (code: 0.5; paper: 0)")
    kd_temperature: float = Field(1.0, gt=0, description="softmax temperature T of the distillation (reference 1)")
    self_augment: int = Field(0, ge=0, description="chains sampled from the NAT model per problem, added to the "
                              "positives when they reach the gold answer (0: the code's teacher positives only)")
    augment_temperature: float = Field(0.7, ge=0, description="sampling temperature of self-augmentation")
    augment_max_tokens: int = Field(256, gt=0, description="token budget of one self-augmentation chain")


class SampleParams(ModelParams):
    """Whole chains for test problems from any model or adapter: greedy, or n_samples samples at a temperature."""

    problems: Annotated[str, Ref("dataset", kind="problems")] = Field(description="problem dataset to solve")
    n_samples: Annotated[int, Was("n")] = Field(1, gt=0, le=256, description="chains per problem (1 with "
                                                "temperature 0: greedy, the main table; 16 for SC/ASC)")
    temperature: float = Field(0.0, ge=0, description="0: greedy (reference main table); >0: sampled")
    max_tokens: int = Field(512, gt=0, description="token budget of one chain (reference: 1024)")
    fewshot: Annotated[str | None, Ref("dataset", kind="problems")] = Field(
        None, description="dataset whose worked solutions are demonstrations (default none: trained students "
        "answer zero-shot)")
    n_fewshot: int = Field(0, ge=0, description="demonstrations before each problem")
    labeler: Labeler = Field("math-verify", description="how a chain's answer is checked against the gold answer")
    seed: int = Field(0, description="sampling seed")

    @model_validator(mode="after")
    def _greedy_once(self) -> SampleParams:
        if self.temperature == 0 and self.n_samples > 1:
            raise ValueError("greedy decoding (temperature 0) gives one chain; set n_samples=1 or a temperature > 0")
        return self

    def prompt_templates(self) -> tuple[str, ...]:
        return ("tdg-chain",)


class TrainRankerParams(TrainParams):
    """B4: a ranker scores question + chain in (0, 1); trained on one positive and one negative chain per question."""

    problems: Annotated[str, Ref("dataset", kind="problems")] = Field(
        description="training problem dataset whose labelled chains form the pairs")
    teacher: Annotated[str, Ref("chains", dataset="problems")] = Field(
        min_length=1, max_length=200, description="chain set to pair (teacher_chains.teacher) on `problems`")
    encoder: Annotated[str, Ref("model", primary=True, formats=("embedding", "base"))] = Field(
        BUNDLED_EMBEDDER, description="encoder: an embedding model (the bundled MiniLM) or a base causal LM, "
        "whose last hidden states are mean-pooled over the chain's tokens (reference: Flan-T5-XL encoder)")
    ranker_name: Annotated[str | None, Makes("ranker-job{job_id}", format="ranker", role="ranker")] = Field(
        None, description="registry name of the trained ranker (default ranker-job<ID>)")
    heldout_fraction: float = Field(0.2, ge=0, lt=1, description="share of the questions with both a positive "
                                    "and a negative chain held out to measure ranker accuracy (s_pos > s_neg)")
    p: float = Field(3.0, gt=0, description="pair loss (1 - s_pos)^p + s_neg^p (reference: 3)")
    weight_decay: float = Field(1e-5, ge=0, description="AdamW decay, none on biases and norms (reference 1e-5)")
    final_lr_ratio: float = Field(0.02, ge=0, le=1, description="cosine decay ends at this fraction of lr "
                                  "(reference: 0.02)")
    limit: int | None = Field(None, gt=0, description="pair the chains of at most this many questions")
    epochs: Epochs = Field(5, description="passes over the training questions, a fresh pair each (reference 5)")
    lr: LearningRate = Field(2e-5, description="peak learning rate (reference: 2e-5)")
    batch_size: MicroBatch = Field(1, description="pairs per micro batch (reference: 1)")
    grad_accum: GradAccum = 1
    max_length: MaxLength = Field(512, description="tokens of question + chain (longer pairs are cut; reference 512)")
    seed: Seed = Field(0, description="pairing, split, initialisation and shuffling seed (reference: 0)")


class ScoreSamplesParams(Params):
    """B4 inference: the ranker's score of every stored sample of a sample job."""

    sample_job: Annotated[int, Ref("job", kind="sample", primary=True)] = Field(
        description="the sample job whose chains to score")
    ranker: Annotated[str, Ref("model", formats=("ranker",))] = Field(
        description="a trained ranker (a train-ranker result)")
    batch_size: int = Field(16, gt=0, le=1024, description="samples per encoder call")


class AggregateParams(Params):
    """B4/B6: per problem, greedy, self-consistency and ASC under each vote function, as predictions."""

    sample_job: Annotated[int, Ref("job", kind="sample", primary=True, needs=(Need("n_samples", ">", 1),))] = Field(
        description="the sample job with n_samples > 1 samples per problem to vote over")
    score_samples_job: Annotated[int | None, Ref("job", kind="score-samples", of="sample_job"),
                                 Was("score_job")] = Field(
        None, description="ranker scores of those samples (a score-samples job of sample_job; without: "
        "self-consistency only)")
    greedy_sample_job: Annotated[int | None, Ref("job", kind="sample", like="sample_job", alike=("model",),
                                                 needs=(Need("n_samples", "==", 1), Need("temperature", "==", 0))),
                                 Was("greedy_job")] = Field(
        None, description="a greedy sample job of the same model, for the greedy row")
    votes: list[VoteFunction] = Field(default_factory=lambda: list(VOTE_FUNCTIONS), min_length=1,
                                      description="ASC vote functions to store, as methods asc-f0..asc-f3")
    vote: VoteFunction = Field("f3", description="the headline ASC vote (reference default: f3, f = s)")
    unanswered: Unanswered = Field("vote", description=UNANSWERED_HELP + "; default vote")

    @model_validator(mode="after")
    def _headline_is_stored(self) -> AggregateParams:
        if self.vote not in self.votes:
            raise ValueError(f"the headline vote {self.vote} is not among votes {self.votes}; add it to votes or "
                             "pick one of them")
        return self


COLLECT_CHAINS = JobKind("collect-chains", CollectChainsParams, "rplat.runners.tdg.chains:collect",
                         "Sample n_samples teacher chains per problem and label them positive/negative (TDG B1).",
                         reads_reviews=True)
SAMPLE = JobKind("sample", SampleParams, "rplat.runners.tdg.chains:sample",
                 "Generate whole chains for problems (greedy or n_samples samples) and check their answers (TDG "
                 "eval).", reads_reviews=True)
TRAIN_RANKER = JobKind("train-ranker", TrainRankerParams, "rplat.runners.tdg.ranker:train",
                       "Train the ASC ranker on positive/negative chain pairs and measure held-out accuracy (TDG B4).",
                       reads_reviews=True)
SCORE_SAMPLES = JobKind("score-samples", ScoreSamplesParams, "rplat.runners.tdg.ranker:score_samples",
                        "Score every sample of a sample job with a trained ranker (TDG B4).")
AGGREGATE = JobKind("aggregate", AggregateParams, "rplat.runners.tdg.aggregate:run",
                    "Greedy, self-consistency and ASC votes per problem, with tie credit and margins (TDG B4/B6).",
                    runs_model=False)


@dataclass(frozen=True, kw_only=True)
class TdgTraining(JobKind):
    """A TDG training kind and the row of the paper's table its model fills, declared once: the pipeline trains,
    samples and evaluates one model per row, the report names the row by `setting`, and the handler reads here
    what the kind trains on and with which objective."""

    setting: str  # the row's name in the paper's table; also the registry role of the model the kind trains
    labels: tuple[str, ...]  # the labels of the teacher chains it trains on (none: it reads no chains)
    gold: Callable[[Any], bool] = lambda p: False  # (params) -> whether it also trains on the gold solutions
    objective: str  # "module:function" making its training Objective (from what its handler has), imported then
    builds_on: str | None = None  # the setting whose model it plugs in, named by its params' `<setting>_model`
    reads_reviews: bool = True  # its chains' labels (and the gold answers it labels samples against) are reviewed

    def load_objective(self) -> Callable[..., Any]:
        return resolve(self.objective)


PLAIN_LORA = "rplat.runners.tdg.train:run"  # the handler of every kind that trains one fresh LoRA
MLE = "rplat.runners.tdg.train:mle_objective"

# The TDG training kinds, in the order the paper's Table 2 lists their rows.
TRAINING = (
    TdgTraining("train-sft", TrainSftParams, PLAIN_LORA,
                "Fine-tune on the problems' gold solutions (the TDG table's fine-tune row).",
                setting="sft", labels=(), gold=lambda p: True, objective=MLE, reads_reviews=False),
    TdgTraining("train-kd", TrainKdParams, PLAIN_LORA,
                "CoT knowledge distillation: MLE on the positive chains (TDG baseline).",
                setting="kd", labels=("pos",), objective=MLE),
    TdgTraining("train-mix", TrainMixParams, PLAIN_LORA,
                "MLE on positive and negative chains alike (TDG baseline MIX).",
                setting="mix", labels=("pos", "neg"), objective=MLE),
    TdgTraining("train-nt", TrainNtParams, PLAIN_LORA,
                "Negative training: likelihood of positives minus lambda x that of negatives (TDG baseline).",
                setting="nt", labels=("pos", "neg"), gold=lambda p: p.include_gold,
                objective="rplat.runners.tdg.train:nt_objective"),
    TdgTraining("train-ul", TrainUlParams, PLAIN_LORA,
                "Unlikelihood training on negatives beside MLE on positives (TDG baseline).",
                setting="ul", labels=("pos", "neg"), objective="rplat.runners.tdg.train:ul_objective"),
    TdgTraining("train-neg", TrainNegParams, PLAIN_LORA,
                "Train the negative LoRA on the negative chains (TDG B2 stage 1).",
                setting="neg", labels=("neg",), objective=MLE),
    TdgTraining("train-nat", TrainNatParams, "rplat.runners.tdg.nat:run",
                "Negative Assistant Training: positive LoRA + integration unit, negative LoRA frozen (TDG B2).",
                setting="nat", labels=("pos",), objective="rplat.runners.tdg.nat:nat_objective", builds_on="neg"),
    TdgTraining("train-nce", TrainNceParams, "rplat.runners.tdg.nce:run",
                "Negative Calibrated Enhancement: distil the NAT model into a fresh LoRA (TDG B3).",
                setting="nce", labels=("pos",), objective="rplat.runners.tdg.nce:nce_objective", builds_on="nat"),
)


def training_of(p: TdgTrainParams) -> TdgTraining:
    """The row of the table whose kind takes these params."""
    return next(row for row in TRAINING if type(p) is row.params)


KINDS = [COLLECT_CHAINS, *TRAINING, SAMPLE, TRAIN_RANKER, SCORE_SAMPLES, AGGREGATE]
