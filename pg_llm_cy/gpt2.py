"""GPT-2's parameters: HuggingFace names and shapes, and pg_llm's layout.

Tables and files use HuggingFace GPT-2 names and shapes (`h.0.attn.c_attn.weight`
is (n_embd, 3*n_embd): Conv1D keeps weights as (in, out)).  In memory the
kernels keep all parameters in one buffer in llm.c's order, with linear
weights as (out, in) -- PARAM_KINDS lists that order.  `to_flat` /
`from_flat` convert between the two and assert every shape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GPT2Config:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_positions: int = 1024
    vocab: int = 50257
    eps: float = 1e-5

    def as_tuple(self):
        return (self.n_layer, self.n_head, self.n_embd, self.n_positions, self.vocab, self.eps)


SIZES = {
    "gpt2-small": GPT2Config(12, 12, 768),
    "gpt2-medium": GPT2Config(24, 16, 1024),
    "gpt2-large": GPT2Config(36, 20, 1280),
    "gpt2-xl": GPT2Config(48, 25, 1600),
}

# llm.c order: (HF name with {l} for the layer, per-layer?, transposed in memory)
PARAM_KINDS = [
    ("wte.weight", False, False),
    ("wpe.weight", False, False),
    ("h.{l}.ln_1.weight", True, False),
    ("h.{l}.ln_1.bias", True, False),
    ("h.{l}.attn.c_attn.weight", True, True),
    ("h.{l}.attn.c_attn.bias", True, False),
    ("h.{l}.attn.c_proj.weight", True, True),
    ("h.{l}.attn.c_proj.bias", True, False),
    ("h.{l}.ln_2.weight", True, False),
    ("h.{l}.ln_2.bias", True, False),
    ("h.{l}.mlp.c_fc.weight", True, True),
    ("h.{l}.mlp.c_fc.bias", True, False),
    ("h.{l}.mlp.c_proj.weight", True, True),
    ("h.{l}.mlp.c_proj.bias", True, False),
    ("ln_f.weight", False, False),
    ("ln_f.bias", False, False),
]

# buffers in HuggingFace state dicts that are not parameters
IGNORED = re.compile(r"^(h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)$")


def hf_shape(cfg: GPT2Config, name: str) -> tuple:
    """HuggingFace shape of the parameter `name` (without `transformer.`)."""
    C, V, T = cfg.n_embd, cfg.vocab, cfg.n_positions
    base = re.sub(r"^h\.\d+\.", "h.{l}.", name)
    shapes = {
        "wte.weight": (V, C), "wpe.weight": (T, C),
        "h.{l}.ln_1.weight": (C,), "h.{l}.ln_1.bias": (C,),
        "h.{l}.attn.c_attn.weight": (C, 3 * C), "h.{l}.attn.c_attn.bias": (3 * C,),
        "h.{l}.attn.c_proj.weight": (C, C), "h.{l}.attn.c_proj.bias": (C,),
        "h.{l}.ln_2.weight": (C,), "h.{l}.ln_2.bias": (C,),
        "h.{l}.mlp.c_fc.weight": (C, 4 * C), "h.{l}.mlp.c_fc.bias": (4 * C,),
        "h.{l}.mlp.c_proj.weight": (4 * C, C), "h.{l}.mlp.c_proj.bias": (C,),
        "ln_f.weight": (C,), "ln_f.bias": (C,),
    }
    return shapes[base]


def param_names(cfg: GPT2Config):
    """Every parameter name, in llm.c order (layers inside each kind)."""
    for pattern, per_layer, _ in PARAM_KINDS:
        if per_layer:
            for layer in range(cfg.n_layer):
                yield pattern.format(l=layer)
        else:
            yield pattern


def num_params(cfg: GPT2Config) -> int:
    return sum(int(np.prod(hf_shape(cfg, n))) for n in param_names(cfg))


def strip_prefix(name: str) -> str:
    return name[len("transformer."):] if name.startswith("transformer.") else name


def to_flat(cfg: GPT2Config, state: dict) -> np.ndarray:
    """HuggingFace-named float32 arrays -> the kernels' parameter buffer."""
    state = {strip_prefix(k): v for k, v in state.items()}
    out = np.empty(num_params(cfg), np.float32)
    pos = 0
    for pattern, per_layer, transposed in PARAM_KINDS:
        layers = range(cfg.n_layer) if per_layer else [None]
        for layer in layers:
            name = pattern.format(l=layer)
            arr = np.asarray(state[name], dtype=np.float32)
            assert arr.shape == hf_shape(cfg, name), f"{name}: {arr.shape} != {hf_shape(cfg, name)}"
            flat = (arr.T if transposed else arr).reshape(-1)
            out[pos:pos + flat.size] = flat
            pos += flat.size
    assert pos == out.size
    return out


def flat_from_table(cfg: GPT2Config, tensors: dict) -> np.ndarray:
    """llm_param's tensors (already (out, in)) -> the kernels' parameter buffer."""
    parts = []
    for name in param_names(cfg):
        t = np.asarray(tensors[name], dtype=np.float32)
        shape = hf_shape(cfg, name)
        transposed = any(name.endswith(p.split("{l}.")[-1]) and tr for p, _, tr in PARAM_KINDS)
        assert t.shape == (shape[::-1] if transposed else shape), f"{name}: {t.shape}"
        parts.append(t.reshape(-1))
    return np.concatenate(parts)


def from_flat(cfg: GPT2Config, flat: np.ndarray) -> dict:
    """The kernels' parameter buffer -> HuggingFace-named arrays."""
    assert flat.size == num_params(cfg), f"{flat.size} != {num_params(cfg)}"
    state = {}
    pos = 0
    for pattern, per_layer, transposed in PARAM_KINDS:
        layers = range(cfg.n_layer) if per_layer else [None]
        for layer in layers:
            name = pattern.format(l=layer)
            shape = hf_shape(cfg, name)
            n = int(np.prod(shape))
            chunk = flat[pos:pos + n]
            state[name] = (chunk.reshape(shape[::-1]).T if transposed else chunk.reshape(shape)).copy()
            pos += n
    return state
