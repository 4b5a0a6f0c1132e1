"""GPT-2's parameters: HuggingFace names and shapes, and pg_llm's layout.

Tables and files use HuggingFace GPT-2 names and shapes (`h.0.attn.c_attn.weight`
is (n_embd, 3*n_embd): Conv1D keeps weights as (in, out)).  In memory the
kernels keep all parameters in one buffer in llm.c's order, with linear
weights as (out, in) -- the kernels' parameter table (param_kinds) lists
that order; this module derives every name and shape from it.  `to_flat` /
`from_flat` convert between the two and assert every shape.
"""
from __future__ import annotations

import functools
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

# buffers in HuggingFace state dicts that are not parameters
IGNORED = re.compile(r"^(h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)$")


@functools.lru_cache(maxsize=None)
def param_kinds(cfg: GPT2Config) -> tuple:
    """The kernels' one parameter table (gpt2_param_table), in llm.c's order:
    (HF name with {l} for the layer, per layer, transposed in memory,
    HuggingFace shape)."""
    from pg_llm_cy._kernels import gpt2_param_table
    kinds = []
    for suffix, per_layer, transposed, rows, cols in gpt2_param_table(
            cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions, cfg.vocab):
        shape = (rows,) if cols == 1 else ((cols, rows) if transposed else (rows, cols))
        kinds.append(("h.{l}." + suffix if per_layer else suffix, per_layer, transposed, shape))
    return tuple(kinds)


def _kind(cfg: GPT2Config, name: str) -> tuple:
    base = re.sub(r"^h\.\d+\.", "h.{l}.", name)
    for kind in param_kinds(cfg):
        if kind[0] == base:
            return kind
    raise KeyError(f"{name} is not a GPT-2 parameter")


def hf_shape(cfg: GPT2Config, name: str) -> tuple:
    """HuggingFace shape of the parameter `name` (without `transformer.`)."""
    return _kind(cfg, name)[3]


def hf_transposed(name: str) -> bool:
    """Whether HuggingFace's Conv1D stores `name` as (in, out) (llm_param
    and the kernels keep (out, in))."""
    return _kind(GPT2Config(n_layer=1, n_head=1, n_embd=1, n_positions=1, vocab=1), name)[2]


def param_names(cfg: GPT2Config):
    """Every parameter name, in llm.c order (layers inside each kind)."""
    for pattern, per_layer, _, _ in param_kinds(cfg):
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
    for name in param_names(cfg):
        arr = np.asarray(state[name], dtype=np.float32)
        assert arr.shape == hf_shape(cfg, name), f"{name}: {arr.shape} != {hf_shape(cfg, name)}"
        flat = (arr.T if hf_transposed(name) else arr).reshape(-1)
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
        assert t.shape == (shape[::-1] if hf_transposed(name) else shape), f"{name}: {t.shape}"
        parts.append(t.reshape(-1))
    return np.concatenate(parts)


def from_flat(cfg: GPT2Config, flat: np.ndarray) -> dict:
    """The kernels' parameter buffer -> HuggingFace-named arrays."""
    assert flat.size == num_params(cfg), f"{flat.size} != {num_params(cfg)}"
    state = {}
    pos = 0
    for name in param_names(cfg):
        shape = hf_shape(cfg, name)
        n = int(np.prod(shape))
        chunk = flat[pos:pos + n]
        state[name] = (chunk.reshape(shape[::-1]).T if hf_transposed(name)
                       else chunk.reshape(shape)).copy()
        pos += n
    return state
