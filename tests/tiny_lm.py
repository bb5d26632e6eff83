"""A tiny random causal LM and tokenizer built in-process (no downloads) for every LLM test."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sqlalchemy.orm import Session
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from rplat.models import Dataset, Model

CORPUS = [
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have? Answer: 3 + 4 = 7. The answer is 7.",
    "The cat sat on the mat because it was warm. Rationale: cats like warm places.",
    "Problem: compute 12 * 3. Solution: 12 * 3 = 36, so the answer is 36.",
    "Wikipedia passage about rivers, mountains, numbers, reasoning and future text.",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@functools.cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>",
                                   unk_token="<unk>", chat_template=CHAT_TEMPLATE)


def tiny_model(seed: int = 0, kv_heads: int = 2) -> LlamaForCausalLM:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def save_tiny(path: Path, seed: int = 0) -> Path:
    """Write the tiny model and tokenizer as a model directory (safetensors), like a converted checkpoint."""
    tiny_model(seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def register_tiny(session: Session, directory: Path) -> Model:
    """Save the tiny model under `directory`/tiny and register it as "tiny", an agent."""
    from rplat.registry import register_model

    return register_model(session, "tiny", "base", save_tiny(directory / "tiny"), role="agent")


def tiny_and_chain_set(session: Session, tmp_path: Path, name: str = "train") -> Dataset:
    """Register the tiny model as "tiny" and record a finished import-chains job owning an empty problems dataset
    `name`, for a test to fill with problems and chains."""
    import factories as make

    register_tiny(session, tmp_path)
    return make.dataset(session, name, make.job(session, "import-chains"))
