"""The one loader: shared bases, adapters, the LRU bound, trainable copies, errors, registration.

Unmerged adapters on a shared base are switched per call, a trainable copy is private, a load failure is one
sentence, and registration checks directories by format and writes sha256."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from test_cli_errors import assert_one_clear_sentence, snapshot

from rplat.errors import UserError
from rplat.llm.load import LOADED, load, open_backend
from rplat.llm.resolve import Adapter, BackendSpec
from rplat.models import Job, Model, ModelParent
from rplat.queue import Queue
from rplat.registry import register_model
from rplat.runners.framework.runner import Runner, RunnerOptions
from rplat.store import transaction

from stores import Store
from tiny_lm import save_tiny

CONTEXT = "Question: Tom has 3 apples and buys 4 more."
CONTINUATION = " How many apples does he have? Answer: 7."


@pytest.fixture(autouse=True)
def _empty_loader(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("RPLAT_MAX_LOADED_MODELS", raising=False)
    monkeypatch.delenv("RPLAT_MAX_LOADED_BYTES", raising=False)
    LOADED.clear()
    yield
    LOADED.clear()


def make_lora(base_dir: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter of the model in `base_dir` with random, non-zero A and B (a fresh adapter's B is zero, which
    would make it indistinguishable from the base); its adapter_config.json names `base_dir` as its base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft.save_pretrained(out)
    return out


def merged_logits(base_dir: Path, adapter_dir: Path | None, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a separately loaded copy with the adapter merged into its weights (the reference)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    with torch.no_grad():
        return model.eval()(ids).logits[0].float()


def reference_logprobs(logits: torch.Tensor, ids: list[int], n_context: int) -> list[float]:
    logprobs = torch.log_softmax(logits, dim=-1)
    return [logprobs[pos - 1, ids[pos]].item() for pos in range(n_context, len(ids))]


def spec(name: str, base_dir: Path, *adapters: Adapter) -> BackendSpec:
    fingerprint = "+".join(["base", *(a.fingerprint for a in adapters)])
    return BackendSpec("hf", name, str(base_dir), fingerprint, f"base-{base_dir.name}", adapters, device="cpu")


def adapter(name: str, path: Path) -> Adapter:
    return Adapter(name, "lora", str(path), hashlib.sha256(name.encode()).hexdigest())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    base = save_tiny(root / "base")
    return {"base": base, "a": make_lora(base, root / "a", seed=1), "b": make_lora(base, root / "b", seed=2),
            "other": save_tiny(root / "other", seed=5)}


def test_adapters_share_one_unmerged_base_and_each_call_gives_its_merged_models_numbers(
        models: dict[str, Path]) -> None:
    base_spec = spec("base", models["base"])
    a_spec, b_spec = spec("a", models["base"], adapter("a", models["a"])), spec("b", models["base"],
                                                                               adapter("b", models["b"]))
    backends = {"base": open_backend(base_spec), "a": open_backend(a_spec), "b": open_backend(b_spec)}
    assert len({id(view.model) for view in backends.values()}) == 1, "one module for the base and both adapters"
    assert LOADED.base_paths() == [str(models["base"])]
    assert set(backends["a"].model.peft_config) == {a_spec.adapters[0].slot, b_spec.adapters[0].slot}
    ctx_ids = backends["base"].encode(CONTEXT)
    ids = ctx_ids + backends["base"].tokenizer(CONTINUATION, add_special_tokens=False)["input_ids"]
    tensor = torch.tensor([ids])
    expected = {"base": merged_logits(models["base"], None, tensor), "a": merged_logits(models["base"], models["a"],
                                                                                          tensor),
                "b": merged_logits(models["base"], models["b"], tensor)}
    assert (expected["a"] - expected["b"]).abs().max() > 1e-2 and (expected["a"] - expected["base"]).abs().max() > 1e-2
    for which in ["a", "base", "b", "a"]:
        view = backends[which]
        with view.activated(), torch.no_grad():
            logits = view.model(tensor).logits[0].float()
        torch.testing.assert_close(logits, expected[which], atol=1e-5, rtol=1e-5)
        [scored] = view.score([CONTEXT], [CONTINUATION])
        assert scored == pytest.approx(reference_logprobs(expected[which], ids, len(ctx_ids)), abs=1e-5)


def test_a_backend_is_opened_once_per_view_and_keeps_the_effective_fingerprint(models: dict[str, Path]) -> None:
    a_spec = spec("a", models["base"], adapter("a", models["a"]))
    first, again = open_backend(a_spec), open_backend(a_spec)
    assert first is again
    assert first.fingerprint == a_spec.fingerprint != open_backend(spec("base", models["base"])).fingerprint


def test_two_threads_on_two_adapters_never_see_each_others_weights(models: dict[str, Path]) -> None:
    views = [open_backend(spec("a", models["base"], adapter("a", models["a"]))),
             open_backend(spec("b", models["base"], adapter("b", models["b"])))]
    alone = [view.score([CONTEXT], [CONTINUATION]) for view in views]
    seen: list[list[list[list[float]]]] = [[], []]

    def work(k: int) -> None:
        for _ in range(10):
            seen[k].append(views[k].score([CONTEXT], [CONTINUATION]))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        assert seen[k] == [alone[k]] * 10
    assert alone[0] != alone[1]


@pytest.mark.parametrize("limit", ["count", "bytes"])
def test_loading_a_second_base_beyond_the_limit_evicts_the_first(models: dict[str, Path], limit: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first = open_backend(spec("base", models["base"]))
    if limit == "count":
        monkeypatch.setenv("RPLAT_MAX_LOADED_MODELS", "1")
    else:  # room for one tiny model's weights, not two
        monkeypatch.setenv("RPLAT_MAX_LOADED_MODELS", "5")
        monkeypatch.setenv("RPLAT_MAX_LOADED_BYTES", str(LOADED.nbytes() + 1))
    open_backend(spec("other", models["other"]))
    assert LOADED.base_paths() == [str(models["other"])]
    reloaded = open_backend(spec("base", models["base"]))
    assert LOADED.base_paths() == [str(models["base"])]
    assert reloaded is not first and reloaded.model is not first.model
    assert reloaded.score([CONTEXT], [CONTINUATION]) == first.score([CONTEXT], [CONTINUATION])


def test_an_invalid_limit_is_one_sentence(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPLAT_MAX_LOADED_MODELS", "two")
    with pytest.raises(UserError, match="RPLAT_MAX_LOADED_MODELS='two' is not a positive whole number"):
        open_backend(spec("base", models["base"]))


def test_trainable_gives_a_private_copy_that_leaves_the_shared_module_alone(models: dict[str, Path]) -> None:
    a_spec = spec("a", models["base"], adapter("a", models["a"]))
    shared, tokenizer = load(a_spec)
    assert load(a_spec)[0] is shared and tokenizer is open_backend(a_spec).tokenizer
    before = {name: p.detach().clone() for name, p in shared.named_parameters()}
    private, _ = load(a_spec, trainable=True)
    assert private is not shared and LOADED.base_paths() == [str(models["base"])]
    lora = [p for name, p in private.named_parameters() if "lora_" in name]
    assert lora and all(p.requires_grad for p in lora)
    assert not any(p.requires_grad for p in shared.parameters())
    with torch.no_grad():
        for p in private.parameters():
            p.add_(1.0)
    for name, p in shared.named_parameters():
        assert torch.equal(p, before[name]), name
    bare, _ = load(a_spec, adapters=(), trainable=True)
    assert not any("lora_" in name for name, _ in bare.named_parameters())


def test_missing_or_corrupt_weights_fail_with_one_sentence(models: dict[str, Path], tmp_path: Path) -> None:
    broken = save_tiny(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match=r"^the model in .*broken cannot be loaded \(.*\); register a complete"):
        open_backend(spec("broken", broken))
    (broken / "model.safetensors").unlink()
    with pytest.raises(UserError, match=r"has no weight files"):
        open_backend(spec("broken", broken))
    with pytest.raises(UserError, match=r"the adapter directory .* does not exist"):
        open_backend(spec("gone", models["base"], adapter("gone", tmp_path / "gone")))


def test_an_adapter_that_does_not_fit_leaves_no_damaged_base_in_use(models: dict[str, Path], tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2)
    get_peft_model(LlamaForCausalLM(wider), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "w")
    base = open_backend(spec("base", models["base"]))
    expected = base.score([CONTEXT], [CONTINUATION])
    with pytest.raises(UserError, match=r"^adapter 'wide' in .* does not fit its base \(RuntimeError: .*size mismatch"):
        open_backend(spec("wide", models["base"], adapter("wide", tmp_path / "w")))
    assert LOADED.base_paths() == []
    with pytest.raises(RuntimeError, match="was unloaded because adapter 'wide' failed to attach"):
        base.score([CONTEXT], [CONTINUATION])
    assert open_backend(spec("base", models["base"])).score([CONTEXT], [CONTINUATION]) == expected


# --- registration and a job on a broken model (both stores) ------------------------------------------------


def test_a_directory_without_config_json_is_refused_with_one_sentence(db: Store, tmp_path: Path) -> None:
    folder = tmp_path / "weights-only"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    before = snapshot(db)
    for args in ([], ["--format", "base"]):
        proc = db.rplat("models", "add", "bad", str(folder), *args)
        assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, [str(folder), "config.json"])
    assert snapshot(db) == before


def test_a_model_without_a_tokenizer_is_refused(db: Store, tmp_path: Path) -> None:
    folder = save_tiny(tmp_path / "no-tokenizer")
    (folder / "tokenizer.json").unlink()
    proc = db.rplat("models", "add", "bad", str(folder))
    assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, ["has no tokenizer"])


def test_a_lora_directory_is_detected_and_its_base_found_from_adapter_config(db: Store, tmp_path: Path) -> None:
    base = save_tiny(tmp_path / "tiny")
    lora = make_lora(base, tmp_path / "tiny-lora", seed=3)
    assert json.loads((lora / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    for f in lora.iterdir():
        (orphan / f.name).write_bytes(f.read_bytes())
    proc = db.rplat("models", "add", "tiny-lora", str(lora))
    assert_one_clear_sentence(proc.stdout, proc.stderr, proc.returncode, [str(base), "is not registered", "--base"])
    assert "tiny" in db.rplat("models", "add", "tiny", str(base), check=True).stdout
    out = db.rplat("models", "add", "tiny-lora", str(lora), check=True).stdout
    assert "(lora on tiny," in out
    with transaction(db.engine()) as s:
        rows = {m.name: m for m in s.scalars(select(Model))}
        parent = s.scalar(select(ModelParent.parent_id).where(ModelParent.model_id == rows["tiny-lora"].id,
                                                              ModelParent.relation == "base"))
    assert (rows["tiny"].format, rows["tiny-lora"].format, parent) == ("base", "lora", rows["tiny"].id)
    assert rows["tiny"].sha256 == hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()
    assert rows["tiny-lora"].sha256 == hashlib.sha256((lora / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert rows["tiny"].sha256 != rows["tiny"].fingerprint  # the fingerprint also covers configs and tokenizer


def test_a_solve_job_on_unloadable_weights_fails_once_with_one_sentence(db: Store, tmp_path: Path) -> None:
    path = save_tiny(tmp_path / "tiny")
    with transaction(db.engine()) as s:
        register_model(s, "tiny", "base", path, role="agent")
    (path / "model.safetensors").write_bytes(b"truncated")
    problems = tmp_path / "p.jsonl"
    problems.write_text(json.dumps({"id": "1", "question": "What is 2+3?", "answer": "5"}) + "\n")
    db.rplat("import", "problems", str(problems), "--dataset", "p", "--id-field", "id", check=True)
    queue = Queue(db.engine())
    job_id, _ = queue.enqueue("solve", {"problems": "p", "model": "tiny", "method": "greedy", "max_steps": 1,
                                        "step_tokens": 2}, max_attempts=3)
    Runner(queue, db.home, RunnerOptions(once=True, lease_seconds=30)).run()
    with transaction(db.engine()) as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.status, job.attempts) == ("failed", 1)
        assert job.error.startswith(f"the model in {path} cannot be loaded (") and "\n" not in job.error
