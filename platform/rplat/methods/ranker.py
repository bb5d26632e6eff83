"""The ASC ranker (TDG B4): an encoder mean-pooled over the chain's tokens, a residual ELU head.

For a question q and a chain c, tokenized as one pair (`[specials] q [specials] c [specials]`), the encoder's
last hidden states are averaged over the chain's tokens only (`chain_mask`: 1 on c, 0 on q, on special tokens
and on padding), and the head of the reference's `FinalPooler` scores the pooled vector h:

    o = ELU(D1 h) + h,  o = ELU(D2 o) + o,  s = sigmoid(w . o)   in (0, 1).

A pair of one positive and one negative chain of a question costs `(1 - s_pos)^p + s_neg^p` (reference p = 3).
The encoder is any transformers `AutoModel`: the Transformer module of a sentence-transformers directory (the
bundled MiniLM) or the decoder of a causal LM (its last hidden states). A trained ranker is a directory:
`encoder/` (the fine-tuned encoder and its tokenizer, `save_pretrained`, safetensors), `head.safetensors` and
`ranker_config.json`; loading reads safetensors only.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rplat.errors import UserError

CONFIG_FILE = "ranker_config.json"
HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"
POOLING = "chain-mean"
ENCODER_KINDS = ("embedding", "base")
# A tokenizer without a recorded limit reports a huge sentinel as its model_max_length.
_NO_LIMIT = 10**6


class RankerHead(nn.Module):
    """The reference's FinalPooler: two residual ELU layers and a sigmoid-scored projection."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense1 = nn.Linear(hidden_size, hidden_size)
        self.dense2 = nn.Linear(hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        o = F.elu(self.dense1(h)) + h
        o = F.elu(self.dense2(o)) + o
        return torch.sigmoid(self.score(o)).squeeze(-1)


def chain_mean(hidden: torch.Tensor, chain_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (rows, tokens, dim) over the tokens where `chain_mask` (rows, tokens) is 1."""
    weights = chain_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class Ranker(nn.Module):
    """Encoder + chain-token mean pooling + `RankerHead`; `forward` gives one score in (0, 1) per row."""

    def __init__(self, encoder: nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = RankerHead(hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, chain_mask: torch.Tensor
                ) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(chain_mean(hidden.float(), chain_mask))


def pair_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, p: float) -> torch.Tensor:
    """Per pair: (1 - s_pos)^p + s_neg^p (reference p = 3)."""
    return (1.0 - s_pos).pow(p) + s_neg.pow(p)


# --- inputs ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """One question + chain as token ids, with the chain-token mask; `truncated`: it had to be cut to fit."""

    input_ids: list[int]
    chain_mask: list[int]
    truncated: bool


def encode_pair(tokenizer: Any, question: str, chain: str, max_length: int) -> Encoded:
    """Tokenize question and chain as one pair with the tokenizer's special tokens, cut to `max_length` (the
    longer of the two first); the chain mask is 1 exactly on the chain's own tokens."""
    full = len(tokenizer(question, chain)["input_ids"])
    enc = tokenizer(question, chain, truncation="longest_first", max_length=max_length)
    mask = [1 if sid == 1 else 0 for sid in enc.sequence_ids()]
    return Encoded(list(enc["input_ids"]), mask, full > max_length)


def collate(rows: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and chain_mask of encoded rows."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    chain = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        attention[i, :n] = 1
        chain[i, :n] = torch.tensor(r.chain_mask)
    return {"input_ids": ids, "attention_mask": attention, "chain_mask": chain}


def draw_pair(positives: Sequence[int], negatives: Sequence[int], *, seed: int, epoch: int, problem_id: int
              ) -> tuple[int, int]:
    """One positive and one negative of a question for an epoch, a function of (seed, epoch, question) alone."""
    rng = random.Random(f"ranker-pair:{seed}:{epoch}:{problem_id}")
    return rng.choice(sorted(positives)), rng.choice(sorted(negatives))


def heldout_questions(question_ids: Sequence[int], fraction: float, seed: int) -> set[int]:
    """A seeded `fraction` of the questions (at least one when fraction > 0, never all of them)."""
    if fraction <= 0 or len(question_ids) < 2:
        return set()
    n = min(len(question_ids) - 1, max(1, round(fraction * len(question_ids))))
    return set(random.Random(f"ranker-heldout:{seed}").sample(sorted(question_ids), n))


# --- encoders and saved rankers ----------------------------------------------------------------------------


def encoder_dir(path: Path, kind: str) -> Path:
    """The transformers directory inside an encoder model: a sentence-transformers model keeps its Transformer
    module where modules.json says; a causal LM is its own directory."""
    if kind not in ENCODER_KINDS:
        raise UserError(f"a ranker encoder must be an embedding or a base model, not a {kind} model; pass "
                        f"--param encoder= the bundled MiniLM or a base language model.")
    if kind == "base":
        return path
    modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
    transformer = [m for m in modules if str(m.get("type", "")).endswith("models.Transformer")]
    if not transformer:
        raise UserError(f"{path / 'modules.json'} has no Transformer module to encode with; pass --param encoder= "
                        "a sentence-transformers model or a base language model.")
    return path / transformer[0].get("path", "")


def load_encoder(path: Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """(transformers AutoModel, tokenizer) from a local directory, never the hub; safetensors weights only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"the encoder in {path} cannot be loaded ({type(exc).__name__}); register a complete "
                        "model directory (config.json, *.safetensors, tokenizer).") from exc
    if tokenizer.pad_token_id is None:  # causal LMs often ship without one; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return encoder, tokenizer


def encoder_limit(encoder: nn.Module, tokenizer: Any) -> int:
    """The longest input the encoder takes: its position embeddings, or the tokenizer's limit if smaller."""
    limits = [n for n in (getattr(encoder.config, "max_position_embeddings", None), tokenizer.model_max_length)
              if isinstance(n, int) and 0 < n < _NO_LIMIT]
    return min(limits) if limits else _NO_LIMIT


@dataclass(frozen=True)
class RankerConfig:
    """What a saved ranker needs besides its weights (written to ranker_config.json under "ranker")."""

    encoder_kind: str
    hidden_size: int
    max_length: int
    pooling: str = POOLING

    @property
    def head(self) -> dict[str, Any]:
        h = self.hidden_size
        return {"dense1": [h, h], "dense2": [h, h], "score": [h, 1]}


def save_ranker(ranker: Ranker, tokenizer: Any, directory: Path, cfg: RankerConfig,
                extra: dict[str, Any] | None = None) -> None:
    """Write `encoder/` (weights and tokenizer), `head.safetensors` and `ranker_config.json` into `directory`."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    ranker.encoder.save_pretrained(str(directory / ENCODER_DIR))
    tokenizer.save_pretrained(str(directory / ENCODER_DIR))
    save_file({k: v.detach().cpu().contiguous() for k, v in ranker.head.state_dict().items()},
              str(directory / HEAD_FILE))
    config = {**(extra or {}), "ranker": {**asdict(cfg), "head": cfg.head}}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def read_ranker_config(directory: Path) -> RankerConfig:
    try:
        data = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))["ranker"]
        return RankerConfig(data["encoder_kind"], int(data["hidden_size"]), int(data["max_length"]), data["pooling"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{directory / CONFIG_FILE} is not a ranker's config ({type(exc).__name__}); save the "
                        "ranker again (a train-ranker job).") from None


def load_ranker(directory: Path, device: str | torch.device = "cpu") -> tuple[Ranker, Any, RankerConfig]:
    """(ranker in eval mode, tokenizer, config) of a directory `save_ranker` wrote."""
    from safetensors.torch import load_file

    cfg = read_ranker_config(directory)
    encoder, tokenizer = load_encoder(directory / ENCODER_DIR)
    ranker = Ranker(encoder, cfg.hidden_size)
    ranker.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
    return ranker.to(device).eval(), tokenizer, cfg
