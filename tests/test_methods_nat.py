"""The NAT layer (TDG B2): the formula by hand, base at init, frozen negative LoRA, save/load, format `nat`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from rplat.errors import UserError
from rplat.methods.nat import (
    NATConfig,
    NATLinear,
    attach_nat,
    load_nat,
    nat_layers,
    nat_mode,
    nat_state,
    read_peft_lora,
    save_nat,
    set_nat_mode,
    w_neg_stats,
)

from stores import Store
from tiny_lm import save_tiny, tiny_model, tiny_tokenizer

CFG = NATConfig(r=4, alpha=8.0, dropout=0.0, unit_dim=6)


def _randomise(module: nn.Module, names: tuple[str, ...], seed: int, scale: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.split(".")[-1] in names:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def _neg_lora(seed: int = 3, r: int = 4, alpha: float = 8.0, targets: tuple[str, ...] = ("q_proj", "v_proj")
              ) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A peft LoRA on the tiny model with random (non-zero) A and B, and its saved state dict."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    peft_model = get_peft_model(tiny_model(), LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                                         target_modules=list(targets), task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return peft_model.eval(), get_peft_model_state_dict(peft_model)


def _ids() -> torch.Tensor:
    tok = tiny_tokenizer()
    return torch.tensor([tok("Problem: compute 12 * 3. Solution: 36")["input_ids"]])


def test_the_layer_is_the_b2_formula_written_out() -> None:
    torch.manual_seed(0)
    base = nn.Linear(10, 7)
    layer = NATLinear(base)
    cfg = NATConfig(r=3, alpha=9.0, dropout=0.0, unit_dim=5, beta=0.5)
    adapter = layer.add_adapter("default", cfg)
    _randomise(layer, ("lora_A", "lora_B", "neg_A", "neg_B", "w_q", "w_k", "w_1", "w_2"), seed=1)
    x = torch.randn(2, 4, 10)
    s = 9.0 / 3
    a, b, an, bn = adapter.lora_A, adapter.lora_B, adapter.neg_A, adapter.neg_B
    wq, wk, w1, w2 = adapter.w_q, adapter.w_k, adapter.w_1, adapter.w_2
    h0 = x @ base.weight.T + base.bias
    h_pos = h0 + s * (x @ a.T @ b.T)
    h_neg = h0 + s * (x @ an.T @ bn.T)
    q = x @ wq.T
    k_pos, k_neg = h_pos @ wk.T, h_neg @ wk.T
    v_pos = torch.nn.functional.gelu(h_pos @ w1.T) @ w2.T
    v_neg = torch.nn.functional.gelu(h_neg @ w1.T) @ w2.T
    s_pos, s_neg = (q * k_pos).sum(-1), (q * k_neg).sum(-1)
    top = torch.maximum(s_pos, s_neg)
    e_pos, e_neg = torch.exp(s_pos - top), torch.exp(s_neg - top)
    a_neg = e_neg / (e_pos + e_neg)
    w_neg = 2 * 0.5 * a_neg - 0.5
    w_pos = 1 - w_neg
    expected = h0 + w_pos[..., None] * v_pos + w_neg[..., None] * v_neg
    with torch.no_grad():
        got = layer(x)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(got, h0, atol=1e-3)  # the unit contributes: the check is not vacuous
        assert float(adapter.last_w_neg) == pytest.approx(float(w_neg.mean()), abs=1e-6)
        assert float(w_neg.abs().max()) <= 0.5
        layer.mode = "neg"
        assert torch.allclose(layer(x), h_neg, atol=1e-5)
        layer.active_adapter = None
        assert torch.allclose(layer(x), h0)


def test_config_round_trips_through_json() -> None:
    cfg = NATConfig(r=4, alpha=8.0, dropout=0.1, target_modules=("q_proj", "k_proj"), unit_dim=16, beta=0.3)
    assert NATConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert NATConfig().scaling == 2.0


def test_at_init_a_nat_model_is_the_base_and_mode_neg_is_the_peft_negative_lora() -> None:
    peft_model, neg_state = _neg_lora()
    base = tiny_model()
    nat = attach_nat(tiny_model(), CFG, neg_state, trainable=False).eval()
    ids = _ids()
    assert len(nat_layers(nat)) == 4  # q_proj and v_proj of both layers
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits
        assert torch.allclose(nat(input_ids=ids).logits, base_logits, atol=1e-6)
        peft_logits = peft_model(input_ids=ids).logits
        assert not torch.allclose(peft_logits, base_logits, atol=1e-3)
        with nat_mode(nat, "neg"):
            assert torch.allclose(nat(input_ids=ids).logits, peft_logits, atol=1e-5)
        assert all(layer.mode == "mix" for layer in nat_layers(nat).values())


def test_only_the_positive_lora_and_the_unit_train_and_the_negative_lora_stays_put() -> None:
    _, neg_state = _neg_lora()
    model = attach_nat(tiny_model(), NATConfig(r=4, alpha=8.0, unit_dim=6), neg_state).train()
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if ".nat." not in k or ".neg_" in k}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.split(".")[-1] in ("lora_A", "lora_B", "w_q", "w_k", "w_1", "w_2") for n in trainable)
    assert len(trainable) == 4 * 6
    before = {k: v.detach().clone() for k, v in nat_state(model).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = _ids()
    for _ in range(5):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        for name, param in model.named_parameters():
            if ".neg_" in name or ".nat." not in name:
                assert param.grad is None, name
        optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen_before.items())
    changed = {k for k, v in nat_state(model).items() if not torch.equal(v.detach(), before[k])}
    assert changed == set(before)  # every pos LoRA and unit tensor moved
    stats = w_neg_stats(model)
    assert [(layer, proj) for layer, proj, _ in stats] == [(0, "q_proj"), (0, "v_proj"), (1, "q_proj"), (1, "v_proj")]
    assert all(-0.5 <= w <= 0.5 for *_, w in stats)


def test_save_then_load_gives_identical_logits(tmp_path: Path) -> None:
    _, neg_state = _neg_lora()
    model = attach_nat(tiny_model(), CFG, neg_state, trainable=False).eval()
    _randomise(model, ("lora_A", "lora_B", "w_q", "w_k", "w_1", "w_2"), seed=5)
    save_nat(model, tmp_path / "nat", CFG, {"base_model_name_or_path": "tiny"})
    saved = json.loads((tmp_path / "nat" / "nat_config.json").read_text())
    assert saved["base_model_name_or_path"] == "tiny" and NATConfig.from_dict(saved["nat"]) == CFG
    loaded = load_nat(tiny_model(), tmp_path / "nat").eval()
    ids = _ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        assert not torch.allclose(expected, tiny_model()(input_ids=ids).logits, atol=1e-3)
        assert torch.equal(loaded(input_ids=ids).logits, expected)
        set_nat_mode(model, "neg")
        set_nat_mode(loaded, "neg")
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_bad_targets_and_mismatched_negative_loras_are_user_errors(tmp_path: Path) -> None:
    _, neg_state = _neg_lora()
    with pytest.raises(UserError, match="no linear layer named c_attn"):
        attach_nat(tiny_model(), NATConfig(target_modules=("c_attn",)), neg_state)
    with pytest.raises(UserError, match="rank 4"):
        attach_nat(tiny_model(), NATConfig(r=8, alpha=16.0), neg_state)
    with pytest.raises(UserError, match="modules differ"):
        attach_nat(tiny_model(), NATConfig(r=4, alpha=8.0, target_modules=("q_proj", "k_proj", "v_proj")), neg_state)
    peft_model, _ = _neg_lora()
    peft_model.save_pretrained(tmp_path / "neg")
    assert read_peft_lora(tmp_path / "neg", NATConfig(r=4, alpha=8.0))
    with pytest.raises(UserError, match="set --param lora_r"):
        read_peft_lora(tmp_path / "neg", NATConfig(r=4, alpha=16.0))
    with pytest.raises(UserError, match="unknown NAT mode"):
        set_nat_mode(tiny_model(), "pos")


def test_format_nat_loads_through_the_one_loader_beside_its_negative_lora(db: Store, tmp_path: Path) -> None:
    from rplat.llm import Sampling
    from rplat.llm.load import LOADED, load, open_backend
    from rplat.llm.resolve import prepare_backend
    from rplat.registry import register_model
    from rplat.store import transaction

    peft_model, _ = _neg_lora(r=8, alpha=16.0)
    peft_model.save_pretrained(tmp_path / "neg")
    neg_state = read_peft_lora(tmp_path / "neg", NATConfig())
    reference = attach_nat(tiny_model(), NATConfig(), neg_state, trainable=False).eval()
    _randomise(reference, ("lora_A", "lora_B", "w_q", "w_k", "w_1", "w_2"), seed=7)
    save_nat(reference, tmp_path / "nat", NATConfig())
    with transaction(db.engine()) as s:
        base = register_model(s, "tiny", "base", save_tiny(tmp_path / "tiny"))
        neg = register_model(s, "tiny-neg", "lora", tmp_path / "neg", parents={"base": base.id}, role="neg")
        register_model(s, "tiny-nat", "nat", tmp_path / "nat", parents={"base": base.id, "neg": neg.id}, role="nat")
    ids = _ids()
    LOADED.clear()
    try:
        neg_backend = open_backend(prepare_backend(db.engine(), "tiny-neg"))
        nat_backend = open_backend(prepare_backend(db.engine(), "tiny-nat"))
        base_backend = open_backend(prepare_backend(db.engine(), "tiny"))
        module, _ = load(prepare_backend(db.engine(), "tiny-nat"))
        assert module is nat_backend.model and not module.training
        assert not any(p.requires_grad for p in module.parameters())
        with torch.no_grad():
            with nat_backend.activated():
                got = nat_backend.model(input_ids=ids).logits
            with neg_backend.activated():
                got_neg = neg_backend.model(input_ids=ids).logits
            with base_backend.activated():
                got_base = base_backend.model(input_ids=ids).logits
            assert torch.allclose(got, reference(input_ids=ids).logits, atol=1e-5)
            assert torch.allclose(got_neg, peft_model(input_ids=ids).logits, atol=1e-5)
            assert torch.allclose(got_base, tiny_model()(input_ids=ids).logits, atol=1e-5)
        scores = nat_backend.score(["Problem: compute 12 * 3."], [" Solution: 36"])
        assert len(scores) == 1 and scores[0] and all(v <= 0 for v in scores[0])
        assert nat_backend.generate(["Problem: 1+1"], Sampling(max_tokens=3, temperature=0.0))[0][0].text is not None
    finally:
        LOADED.clear()
    # vLLM has no NAT layer: serving the NAT model would serve its bare base under its name, so it is refused.
    from rplat.serve import plan

    with pytest.raises(UserError, match="'tiny-nat' is a nat model, which vLLM cannot run"):
        plan(db.engine(), "tiny-nat", home=tmp_path, vllm=str(tmp_path / "vllm"))


def test_the_hf_fast_paths_key_their_kv_on_the_nat_mode_and_score_as_the_plain_path() -> None:
    """KV encoded in mode mix is not reused in mode neg (the layers' outputs differ), so a backend switched
    between modes scores each as the plain path does."""
    from rplat.llm.hf import HFBackend
    from rplat.llm.hf_fast import adapters

    model = attach_nat(tiny_model(), CFG, _neg_lora()[1], trainable=False).eval()
    _randomise(model, ("lora_B", "w_2"), seed=5)
    fast = HFBackend(model, tiny_tokenizer(), fingerprint="nat", batch_size=2)
    plain = HFBackend(model, tiny_tokenizer(), fingerprint="nat", batch_size=2, fast=False)
    assert fast.fast
    contexts = ["Problem: compute 12 * 3.", "Problem: compute 12 * 3."]
    continuations = [" Solution: 36", " Solution: 12 * 3 = 36"]
    assert adapters(model) == ("nat:default:mix",)
    mix = fast.score(contexts, continuations)
    with nat_mode(model, "neg"):
        assert adapters(model) == ("nat:default:neg",)
        neg = fast.score(contexts, continuations)
        neg_plain = plain.score(contexts, continuations)
    mix_plain = plain.score(contexts, continuations)
    assert mix[0] != pytest.approx(neg[0], abs=1e-3)
    for got, expected in ((mix, mix_plain), (neg, neg_plain)):
        for a, b in zip(got, expected, strict=True):
            assert a == pytest.approx(b, abs=1e-4)
