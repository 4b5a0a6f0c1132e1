"""The Cython kernels that pg_llm.so runs in the server, for Python.

Every function here calls the same compiled code as the server (pyx/),
through the typed-memoryview wrappers of pg_llm_cy._kernels; this module only
adds numpy conveniences: it allocates outputs and mirrors the SQL functions'
signatures (float32 arrays in, float32 arrays out).

    >>> from pg_llm_cy import kernels as K
    >>> K.matmul(a, b)            # pg_llm_matmul
"""
from __future__ import annotations

import numpy as np

from pg_llm_cy import _kernels as _k
from pg_llm_cy._kernels import (  # noqa: F401  (re-exported)
    BeamSearch,
    Tokenizer,
    gpt2_forward_cached,
    gpt2_forward_rows,
    gpt2_init,
    gpt2_param_sizes,
    gpt2_param_table,
    inflate_raw,
    memory_read_bandwidth,
    npy_build_header,
    npy_parse_header,
    parse_vocab_json,
    pre_tokenize,
    safetensors_parse,
    sample_token,
    sanitize_utf8,
    zip_entries,
    adamw_step as adamw_step_inplace,
    all_finite,
    checksum64,
    clip_by_norm,
    clip_scale,
    cpu_has_avx512,
    exp_into,
    gemm,
    gemm_rowinv,
    get_max_threads,
    lr_schedule,
    omp_team_size,
    rand_uniform_into,
    set_force_portable,
    set_num_threads,
    sum_squares,
)


def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _rows(x: np.ndarray) -> np.ndarray:
    """A 2-D (rows, last-dim) view; a 1-D array is one row."""
    return x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x


# --- matmul -----------------------------------------------------------------
def matmul(a, b) -> np.ndarray:
    """(m, k) @ (k, n)"""
    a, b = _f32(a), _f32(b)
    out = np.empty((a.shape[0], b.shape[1]), np.float32)
    gemm(a, b, out)
    return out


def matmul_backward(a, b, dy):
    """-> (da = dy b^T, db = a^T dy)"""
    a, b, dy = _f32(a), _f32(b), _f32(dy)
    da = np.empty_like(a)
    db = np.empty_like(b)
    gemm(dy, b, da, transB=True)
    gemm(a, dy, db, transA=True)
    return da, db


# --- elementwise ------------------------------------------------------------
def add(a, b) -> np.ndarray:
    a, b = _f32(a), _f32(b)
    out = np.empty_like(a)
    _k.add_into(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    return out


def gelu(x) -> np.ndarray:
    """GPT-2's tanh-approximated GELU."""
    x = _f32(x)
    y = np.empty_like(x)
    _k.gelu_forward(x.reshape(-1), y.reshape(-1))
    return y


def gelu_backward(x, dy) -> np.ndarray:
    x, dy = _f32(x), _f32(dy)
    dx = np.empty_like(x)
    _k.gelu_backward(x.reshape(-1), dy.reshape(-1), dx.reshape(-1))
    return dx


# --- softmax ----------------------------------------------------------------
def softmax(x) -> np.ndarray:
    """Softmax over the last axis."""
    x = _f32(x)
    y = np.empty_like(x)
    _k.softmax_forward(_rows(x), _rows(y))
    return y


def softmax_backward(y, dy) -> np.ndarray:
    y, dy = _f32(y), _f32(dy)
    dx = np.empty_like(y)
    _k.softmax_backward(_rows(y), _rows(dy), _rows(dx))
    return dx


# --- layernorm --------------------------------------------------------------
def layernorm(x, gamma, beta, eps: float = 1e-5) -> np.ndarray:
    """Layernorm over the last axis (biased variance)."""
    x, gamma, beta = _f32(x), _f32(gamma), _f32(beta)
    x2 = x.reshape(-1, gamma.shape[0])
    y = np.empty_like(x2)
    mean = np.empty(x2.shape[0], np.float32)
    rstd = np.empty(x2.shape[0], np.float32)
    _k.layernorm_forward(x2, gamma, beta, y, mean, rstd, eps)
    return y.reshape(x.shape)


def layernorm_backward(x, dy, gamma, eps: float = 1e-5):
    """-> (dx, dgamma, dbeta)"""
    x, dy, gamma = _f32(x), _f32(dy), _f32(gamma)
    x2 = x.reshape(-1, gamma.shape[0])
    dx = np.empty_like(x2)
    dgamma = np.empty_like(gamma)
    dbeta = np.empty_like(gamma)
    _k.layernorm_backward(x2, dy.reshape(x2.shape), gamma, dx, dgamma, dbeta, eps)
    return dx.reshape(x.shape), dgamma, dbeta


def colsum(x) -> np.ndarray:
    x = _f32(x)
    out = np.empty(x.shape[1], np.float32)
    _k.colsum(x, out)
    return out


# --- cross-entropy ----------------------------------------------------------
def cross_entropy_rows(logits, targets) -> np.ndarray:
    """Per-row losses of (rows, V) logits."""
    logits = _rows(_f32(logits))
    t = np.ascontiguousarray(targets, dtype=np.int32).reshape(-1)
    losses = np.empty(logits.shape[0], np.float32)
    _k.cross_entropy_forward(logits, t, losses)
    return losses


def cross_entropy(logits, targets) -> float:
    """Mean loss over rows (as pg_llm_cross_entropy)."""
    return float(np.mean(cross_entropy_rows(logits, targets), dtype=np.float64))


def cross_entropy_backward(logits, targets) -> np.ndarray:
    """Gradient of the mean loss w.r.t. the logits."""
    logits = _f32(logits)
    l2 = _rows(logits)
    t = np.ascontiguousarray(targets, dtype=np.int32).reshape(-1)
    d = np.empty_like(l2)
    _k.cross_entropy_backward(l2, t, d, 1.0 / l2.shape[0])
    return d.reshape(logits.shape)


# --- attention --------------------------------------------------------------
def attention(x, w_qkv, b_qkv, w_o, b_o, n_head: int, return_cache: bool = False):
    """Causal self-attention of one sequence x (T, D) with fused QKV."""
    x = _f32(x)
    T, D = x.shape
    qkv = np.empty((T, 3 * D), np.float32)
    att = np.empty((n_head, T, T), np.float32)
    ctx = np.empty((T, D), np.float32)
    y = np.empty((T, D), np.float32)
    _k.attention_forward(x, _f32(w_qkv), _f32(b_qkv), _f32(w_o), _f32(b_o), qkv, att, ctx, y,
                         n_head)
    return (y, (qkv, att, ctx)) if return_cache else y


def attention_backward(x, w_qkv, b_qkv, w_o, b_o, dy, n_head: int):
    """-> (dx, dw_qkv, db_qkv, dw_o, db_o)"""
    x = _f32(x)
    T, D = x.shape
    _, (qkv, att, ctx) = attention(x, w_qkv, b_qkv, w_o, b_o, n_head, return_cache=True)
    dctx = np.empty((T, D), np.float32)
    dqkv = np.empty((T, 3 * D), np.float32)
    dx = np.empty((T, D), np.float32)
    dw_qkv = np.empty((D, 3 * D), np.float32)
    db_qkv = np.empty(3 * D, np.float32)
    dw_o = np.empty((D, D), np.float32)
    db_o = np.empty(D, np.float32)
    _k.attention_backward(x, _f32(w_qkv), _f32(w_o), qkv, att, ctx, _f32(dy), dctx, dqkv,
                          dx, dw_qkv, db_qkv, dw_o, db_o, n_head)
    return dx, dw_qkv, db_qkv, dw_o, db_o


# --- dropout ----------------------------------------------------------------
def dropout(x, p: float, seed: int, training: bool = True) -> np.ndarray:
    """Inverted dropout with the counter-based mask of `seed`."""
    x = _f32(x)
    if not training or p == 0:
        return x.copy()
    y = np.empty_like(x)
    _k.dropout_forward(x.reshape(-1), y.reshape(-1), p, seed)
    return y


def dropout_backward(dy, p: float, seed: int, training: bool = True) -> np.ndarray:
    """The forward's mask applied to dy (exact)."""
    return dropout(dy, p, seed, training)


def dropout_backward_masked(x, y, dy, p: float) -> np.ndarray:
    """Mask read off the forward's output (x == 0 counts as kept)."""
    x, y, dy = _f32(x), _f32(y), _f32(dy)
    dx = np.empty_like(x)
    _k.dropout_backward_masked(x.reshape(-1), y.reshape(-1), dy.reshape(-1), dx.reshape(-1), p)
    return dx


# --- layout -----------------------------------------------------------------
def transpose(x) -> np.ndarray:
    x = _f32(x)
    y = np.empty((x.shape[1], x.shape[0]), np.float32)
    _k.transpose_into(x, y)
    return y


def zeros_like(x) -> np.ndarray:
    return np.zeros_like(_f32(x))


def ones_like(x) -> np.ndarray:
    return np.ones_like(_f32(x))


# --- optimisation -----------------------------------------------------------
def adamw_step(weight, grad, m, v, lr: float, beta1: float = 0.9, beta2: float = 0.999,
               eps: float = 1e-8, weight_decay: float = 0.01, step: int = 1):
    """-> (weight, m, v) after one AdamW step (inputs unchanged)."""
    w2, m2, v2 = _f32(weight).copy(), _f32(m).copy(), _f32(v).copy()
    _k.adamw_step(w2.reshape(-1), _f32(grad).reshape(-1), m2.reshape(-1), v2.reshape(-1),
                  lr, beta1, beta2, eps, weight_decay, step)
    return w2, m2, v2


def grad_clip(grad, max_norm: float) -> np.ndarray:
    g = _f32(grad)
    out = np.empty_like(g)
    clip_by_norm(g.reshape(-1), out.reshape(-1), max_norm)
    return out


def vexp(x) -> np.ndarray:
    """The kernels' vectorised exp."""
    x = _f32(x)
    out = np.empty_like(x)
    exp_into(x.reshape(-1), out.reshape(-1))
    return out


def rand_uniform(seed: int, n: int) -> np.ndarray:
    out = np.empty(n, np.float32)
    rand_uniform_into(seed, out)
    return out


# --- GPT-2 -------------------------------------------------------------------
def gpt2_logits(flat, cfg, tokens) -> np.ndarray:
    """(T, vocab) logits of one sequence; flat is the kernels' parameter buffer."""
    toks = np.ascontiguousarray(tokens, dtype=np.int32)
    T = toks.shape[0]
    kv = np.zeros(cfg.n_layer * 2 * T * cfg.n_embd, np.float32)
    out = np.empty(T * cfg.vocab, np.float32)
    gpt2_forward_cached(_f32(flat), cfg.as_tuple(), toks, 1, T, 0, kv, T, out, True)
    return out.reshape(T, cfg.vocab)
