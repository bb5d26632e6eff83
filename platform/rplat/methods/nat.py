"""Negative Assistant Training's layer (TDG B2): base linear + positive LoRA + frozen negative LoRA + unit.

Per adapted linear layer, for an input x (docs/tdg.md B2, the code's placement of the softmax):

    h0 = W0 x,  h_pos = h0 + s B A x,  h_neg = h0 + s B_neg A_neg x,  q = W_Q x,  k_j = W_K h_j,
    v_j = W_2 GELU(W_1 h_j),  a = softmax_j(q . k_j)  (no 1/sqrt(d)),  w_neg = 2 beta a_neg - beta,
    w_pos = 1 - w_neg,  h_out = h0 + w_pos v_pos + w_neg v_neg

with W_2 zero-initialised, so a freshly attached layer is the base. Mode `neg` is `h0 + s B_neg A_neg x`.

The forward computes exactly this, re-associated so that the unit costs three thin matmuls per token (W_Q x,
W_1 h0, W_2 ...) instead of seven: a two-way softmax is a sigmoid of the difference, and in
k_neg - k_pos = s W_K (B_neg A_neg x - B A x) the h0 terms cancel, so w_neg = beta tanh(q . (k_neg - k_pos) / 2)
needs only the low-rank parts; W_1 h_j = W_1 h0 + s (W_1 B_j)(A_j x); and W_2 is linear, applied once to
w_pos GELU(W_1 h_pos) + w_neg GELU(W_1 h_neg) (w_pos + w_neg = 1).

`NATLinear` is an `nn.Linear` sharing the base layer's weight and bias (so the base's state-dict keys are
unchanged and peft can still put a LoRA on it); its NAT adapters live in `nat.<name>`, at most one active.
Saved as `nat_model.safetensors` (pos LoRA, unit and the negative LoRA: self-contained) + `nat_config.json`.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rplat.errors import UserError

WEIGHTS_FILE = "nat_model.safetensors"
CONFIG_FILE = "nat_config.json"
MODES = ("mix", "neg")
TRAINABLE = ("lora_A", "lora_B", "w_q", "w_k", "w_1", "w_2")
NEGATIVE = ("neg_A", "neg_B")
DEFAULT_ADAPTER = "default"


@dataclass(frozen=True)
class NATConfig:
    """The NAT layer's shape: the LoRA settings both LoRAs share (B2: r 8, alpha 16) and the unit's."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = field(default=("q_proj", "v_proj"))
    unit_dim: int = 128
    beta: float = 0.5

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "target_modules": list(self.target_modules)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NATConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "target_modules" in known:
            known["target_modules"] = tuple(known["target_modules"])
        return cls(**known)


class NATAdapter(nn.Module):
    """One NAT adapter's weights on one linear layer (d_in -> d_out)."""

    def __init__(self, d_in: int, d_out: int, cfg: NATConfig) -> None:
        super().__init__()
        r, u = cfg.r, cfg.unit_dim
        self.scaling = cfg.scaling
        self.beta = cfg.beta
        self.unit_dim = u
        self.lora_A = nn.Parameter(torch.empty(r, d_in))
        self.lora_B = nn.Parameter(torch.zeros(d_out, r))
        self.neg_A = nn.Parameter(torch.zeros(r, d_in), requires_grad=False)
        self.neg_B = nn.Parameter(torch.zeros(d_out, r), requires_grad=False)
        self.w_q = nn.Parameter(torch.empty(u, d_in))
        self.w_k = nn.Parameter(torch.empty(u, d_out))
        self.w_1 = nn.Parameter(torch.empty(u, d_out))
        self.w_2 = nn.Parameter(torch.zeros(d_out, u))
        for weight in (self.lora_A, self.w_q, self.w_k, self.w_1):  # peft's and nn.Linear's kaiming-uniform
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.last_w_neg: torch.Tensor | None = None  # mean w_neg of the last mix forward (detached)

    def forward(self, x: torch.Tensor, h0: torch.Tensor, mode: str) -> torch.Tensor:
        xd = self.dropout(x)
        s = self.scaling
        if mode == "neg":
            return h0 + s * F.linear(F.linear(xd, self.neg_A), self.neg_B)
        shape = h0.shape
        x, xd, h0 = x.reshape(-1, x.shape[-1]), xd.reshape(-1, x.shape[-1]), h0.reshape(-1, shape[-1])
        r = self.lora_A.shape[0]
        low = F.linear(xd, torch.cat([self.lora_A, self.neg_A]))  # [N, 2r]: A x | A_neg x
        both_b = torch.cat([self.lora_B, self.neg_B], dim=1)  # [d_out, 2r]
        k_b = self.w_k @ both_b  # W_K B | W_K B_neg
        w1_b = self.w_1 @ both_b  # W_1 B | W_1 B_neg
        # softmax_j(q.k_j)[neg] = sigmoid(q.(k_neg - k_pos)), and k_neg - k_pos = s W_K (B_neg A_neg x - B A x):
        # the h0 terms cancel. w_neg = beta (2 a_neg - 1) = beta tanh(q.(k_neg - k_pos) / 2).
        k_diff = s * F.linear(low, torch.cat([-k_b[:, :r], k_b[:, r:]], dim=1))
        score = (F.linear(x, self.w_q) * k_diff).sum(-1, keepdim=True)
        w_neg = self.beta * torch.tanh(0.5 * score)
        self.last_w_neg = w_neg.detach().mean()
        z0 = F.linear(h0, self.w_1)  # W_1 h0; W_1 h_j = W_1 h0 + s (W_1 B_j)(A_j x)
        g_pos = F.gelu(torch.addmm(z0, low[:, :r], w1_b[:, :r].T, alpha=s))
        g_neg = F.gelu(torch.addmm(z0, low[:, r:], w1_b[:, r:].T, alpha=s))
        mixed = g_pos + w_neg * (g_neg - g_pos)  # w_pos g_pos + w_neg g_neg, w_pos = 1 - w_neg
        return torch.addmm(h0, mixed, self.w_2.T).reshape(shape)  # h0 + W_2 mixed = h0 + w_pos v_pos + w_neg v_neg


class NATLinear(nn.Linear):
    """A base `nn.Linear` (its weight and bias shared, frozen) with NAT adapters; none active = the base."""

    def __init__(self, base: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.nat = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.mode = "mix"

    def add_adapter(self, name: str, cfg: NATConfig) -> NATAdapter:
        adapter = NATAdapter(self.in_features, self.out_features, cfg).to(self.weight.device, self.weight.dtype)
        adapter.train(self.training)  # attached to a module in eval mode (a shared, frozen one): no dropout
        self.nat[name] = adapter
        self.active_adapter = name
        return adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = F.linear(x, self.weight, self.bias)
        if self.active_adapter is None:
            return h0
        return self.nat[self.active_adapter](x, h0, self.mode)


# --- attaching ---------------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    """A target's path inside the causal LM, whatever wraps it (peft's prefix and base_layer, DDP's module.)."""
    name = re.sub(r"^(module\.)?(base_model\.model\.)?", "", name)
    return name.replace(".base_layer", "")


def nat_layers(model: nn.Module) -> dict[str, NATLinear]:
    """The model's NAT layers by canonical path (e.g. model.layers.0.self_attn.q_proj)."""
    return {_canonical(n): m for n, m in model.named_modules() if isinstance(m, NATLinear)}


def _targets(model: nn.Module, cfg: NATConfig) -> list[tuple[nn.Module, str, nn.Linear, str]]:
    """(parent, attribute, linear, canonical path) of every target linear; inside a peft LoRA layer, its base."""
    found = []
    for name, module in model.named_modules():
        for attr, child in module.named_children():
            path = _canonical(f"{name}.{attr}" if name else attr)
            if attr == "base_layer" or path.split(".")[-1] not in cfg.target_modules:
                continue
            parent, child_attr = module, attr
            if not isinstance(child, nn.Linear) and isinstance(getattr(child, "base_layer", None), nn.Linear):
                parent, child_attr, child = child, "base_layer", child.base_layer  # a peft LoRA layer's base
            if isinstance(child, nn.Linear):
                found.append((parent, child_attr, child, path))
    return found


def peft_lora_modules(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A peft LoRA state dict (adapter_model.safetensors) as canonical module path -> (A [r, d_in], B [d_out, r])."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        match = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if match is None:
            continue
        parts.setdefault(_canonical(match.group(1)), {})[match.group(2)] = value
    incomplete = sorted(path for path, ab in parts.items() if set(ab) != {"A", "B"})
    if incomplete:
        raise UserError(f"the negative LoRA lacks lora_A or lora_B for {incomplete[0]}; save it again with peft.")
    return {path: (ab["A"], ab["B"]) for path, ab in parts.items()}


def attach_nat(model: nn.Module, cfg: NATConfig, neg_state: Mapping[str, torch.Tensor], *,
               adapter_name: str = DEFAULT_ADAPTER, trainable: bool = True) -> nn.Module:
    """Wrap `model`'s target linears in NAT layers (in place) with the negative LoRA of `neg_state` (a peft LoRA
    state dict, or this module's own neg_A/neg_B keys) frozen in them; the new adapter is active in mode mix.
    Every other weight of the model is frozen; `trainable`: the pos LoRA and unit train (else they are frozen too)."""
    targets = _targets(model, cfg)
    if not targets:
        raise UserError(f"the model has no linear layer named {' or '.join(cfg.target_modules)}; set "
                        "--param target_modules to linear layers it has (e.g. q_proj, v_proj).")
    negatives = _negatives(neg_state)
    paths = {path for *_, path in targets}
    if set(negatives) != paths:
        extra = sorted(set(negatives) - paths) or sorted(paths - set(negatives))
        raise UserError(f"the negative LoRA's modules differ from the NAT targets {list(cfg.target_modules)} (e.g. "
                        f"{extra[0]}); train the negative LoRA with the same target_modules.")
    model.requires_grad_(False)
    for parent, attr, linear, path in targets:
        layer = linear if isinstance(linear, NATLinear) else NATLinear(linear).train(linear.training)
        if adapter_name in layer.nat:
            raise UserError(f"a NAT adapter named {adapter_name!r} is already attached at {path}.")
        neg_a, neg_b = negatives[path]
        if neg_a.shape != (cfg.r, linear.in_features) or neg_b.shape != (linear.out_features, cfg.r):
            raise UserError(f"the negative LoRA at {path} has rank {neg_a.shape[0]} and shape {tuple(neg_b.shape)}"
                            f"x{tuple(neg_a.shape)}, not rank {cfg.r} on this layer; set --param lora_r to the "
                            "negative LoRA's rank, on the base it was trained on.")
        adapter = layer.add_adapter(adapter_name, cfg)
        with torch.no_grad():
            adapter.neg_A.copy_(neg_a)
            adapter.neg_B.copy_(neg_b)
        for name, param in adapter.named_parameters():
            param.requires_grad_(trainable and name in TRAINABLE)
        setattr(parent, attr, layer)
    return model


def _negatives(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    own = {k[:-len(".neg_A")]: (v, state[k[:-len("A")] + "B"]) for k, v in state.items() if k.endswith(".neg_A")}
    return own or peft_lora_modules(state)


def read_peft_lora(directory: Path, cfg: NATConfig) -> dict[str, torch.Tensor]:
    """The weights of a peft LoRA directory, after checking that its rank, alpha and targets are `cfg`'s."""
    from safetensors.torch import load_file

    try:
        config = json.loads((directory / "adapter_config.json").read_text(encoding="utf-8"))
        state = load_file(str(directory / "adapter_model.safetensors"))
    except (OSError, ValueError) as exc:
        raise UserError(f"the negative LoRA in {directory} cannot be read ({type(exc).__name__}); point "
                        "--param neg_model at a train-neg result (a peft LoRA directory).") from None
    targets = config.get("target_modules") or []
    targets = sorted([targets] if isinstance(targets, str) else targets)
    if config.get("r") != cfg.r or float(config.get("lora_alpha", 0)) != float(cfg.alpha) \
            or targets != sorted(cfg.target_modules):
        raise UserError(f"the negative LoRA in {directory} has r={config.get('r')}, "
                        f"lora_alpha={config.get('lora_alpha')}, target_modules={targets}, but the NAT layer "
                        f"wants r={cfg.r}, lora_alpha={cfg.alpha}, target_modules={sorted(cfg.target_modules)}; "
                        "set --param lora_r / lora_alpha / target_modules to the negative LoRA's.")
    return state


# --- modes -------------------------------------------------------------------------------------------------


def set_nat_mode(model: nn.Module, mode: str) -> None:
    """`mix` (the NAT formula) or `neg` (the negative LoRA alone) on every NAT layer of `model`."""
    if mode not in MODES:
        raise UserError(f"unknown NAT mode {mode!r}; use one of {', '.join(MODES)}.")
    for layer in nat_layers(model).values():
        layer.mode = mode


@contextlib.contextmanager
def nat_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """`set_nat_mode` for the block, the previous modes restored after it."""
    before = {path: layer.mode for path, layer in nat_layers(model).items()}
    set_nat_mode(model, mode)
    try:
        yield
    finally:
        for path, layer in nat_layers(model).items():
            layer.mode = before.get(path, layer.mode)


@contextlib.contextmanager
def active_nat(model: nn.Module, adapter_name: str | None) -> Iterator[None]:
    """Exactly this NAT adapter switched on (None: every NAT layer passes the base through) for the block."""
    layers = nat_layers(model).values()
    before = [(layer, layer.active_adapter) for layer in layers]
    for layer in layers:
        layer.active_adapter = adapter_name if adapter_name in layer.nat else None
    try:
        yield
    finally:
        for layer, name in before:
            layer.active_adapter = name


def w_neg_stats(model: nn.Module) -> list[tuple[int, str, float]]:
    """(layer index, projection, mean w_neg of the last mix forward) of every NAT layer that has run one."""
    stats = []
    for path, layer in nat_layers(model).items():
        if layer.active_adapter is None:
            continue
        value = layer.nat[layer.active_adapter].last_w_neg
        if value is None:
            continue
        index = next((int(part) for part in path.split(".") if part.isdigit()), -1)
        stats.append((index, path.split(".")[-1], float(value)))
    return sorted(stats)


# --- saving and loading ------------------------------------------------------------------------------------


def nat_state(model: nn.Module, adapter_name: str = DEFAULT_ADAPTER, *, negative: bool = False
              ) -> dict[str, torch.Tensor]:
    """The adapter's trainable tensors (pos LoRA + unit; with `negative` also the frozen negative LoRA), keyed
    `<canonical path>.<tensor>`."""
    names = TRAINABLE + (NEGATIVE if negative else ())
    state = {}
    for path, layer in nat_layers(model).items():
        if adapter_name in layer.nat:
            adapter = layer.nat[adapter_name]
            state.update({f"{path}.{n}": getattr(adapter, n) for n in names})
    return state


def canonical_state(state: Mapping[str, torch.Tensor], adapter_name: str = DEFAULT_ADAPTER
                    ) -> dict[str, torch.Tensor]:
    """A model state dict's NAT tensors (e.g. the training loop's gathered trainable state) keyed as `nat_state`."""
    out = {}
    for key, value in state.items():
        match = re.fullmatch(rf"(.+)\.nat\.{re.escape(adapter_name)}\.(\w+)", key)
        if match is not None:
            out[f"{_canonical(match.group(1))}.{match.group(2)}"] = value
    return out


def negative_state(neg_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A peft LoRA state dict as the NAT layer's negative tensors, keyed as `nat_state(..., negative=True)`."""
    out = {}
    for path, (a, b) in _negatives(neg_state).items():
        out[f"{path}.neg_A"], out[f"{path}.neg_B"] = a, b
    return out


def save_nat(model: nn.Module, directory: Path, cfg: NATConfig, extra: Mapping[str, Any] | None = None, *,
             adapter_name: str = DEFAULT_ADAPTER, state: Mapping[str, torch.Tensor] | None = None) -> None:
    """Write `nat_model.safetensors` (pos LoRA, unit and negative LoRA) and `nat_config.json` ({"nat": cfg,
    **extra}) into `directory`. `state` (canonical keys, e.g. gathered from FSDP shards) wins over the model's."""
    from safetensors.torch import save_file

    tensors = {**nat_state(model, adapter_name, negative=True), **(state or {})}
    if not tensors:
        raise UserError(f"the model has no NAT adapter {adapter_name!r} to save.")
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps({**(extra or {}), "nat": cfg.to_dict()}, indent=2, sort_keys=True),
                                         encoding="utf-8")


def read_nat_config(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{directory / CONFIG_FILE} cannot be read ({type(exc).__name__}); save the NAT model "
                        "again with save_nat.") from None
    if not isinstance(data, dict) or not isinstance(data.get("nat"), dict):
        raise UserError(f"{directory / CONFIG_FILE} has no \"nat\" settings; save the NAT model again with save_nat.")
    return data


def load_nat(model: nn.Module, directory: Path, *, adapter_name: str = DEFAULT_ADAPTER,
             trainable: bool = False) -> nn.Module:
    """Attach the NAT model saved in `directory` to `model` (in place), active in mode mix."""
    from safetensors.torch import load_file

    cfg = NATConfig.from_dict(read_nat_config(directory)["nat"])
    state = load_file(str(directory / WEIGHTS_FILE))
    attach_nat(model, cfg, state, adapter_name=adapter_name, trainable=trainable)
    expected = nat_state(model, adapter_name, negative=True)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{directory / WEIGHTS_FILE} does not fit this model ("
                        + (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
                        + "); register the NAT model with the base it was trained on.")
    with torch.no_grad():
        for key, tensor in expected.items():
            if tensor.shape != state[key].shape:
                raise UserError(f"{directory / WEIGHTS_FILE}: {key} has shape {tuple(state[key].shape)}, the model "
                                f"wants {tuple(tensor.shape)}; register it with the base it was trained on.")
            tensor.copy_(state[key])
    return model
