"""Every tensor op, forward against a float64 numpy reference and backward
against central finite differences, on odd shapes too; each test runs once
through the Python kernels and once through SQL on a live server."""
import numpy as np
import pytest

import reference as ref
from ops_backends import PythonOps, SqlOps
from reference import assert_close, numerical_grad


@pytest.fixture(params=["python", "sql"])
def ops(request):
    if request.param == "python":
        return PythonOps()
    return SqlOps(request.getfixturevalue("conn"))


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# --- matmul -----------------------------------------------------------------
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (7, 33, 5), (13, 100, 300), (3, 257, 65),
                                   (64, 768, 129), (1, 300, 777), (17, 9, 1), (130, 70, 95)])
def test_matmul_forward(ops, m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    a, b = rand(rng, m, k), rand(rng, k, n)
    assert_close(ops.matmul(a, b), ref.matmul(a, b), rtol=1e-4, atol=1e-4 * np.sqrt(k))


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 5, 4), (7, 9, 11), (2, 13, 3)])
def test_matmul_backward(ops, m, k, n):
    rng = np.random.default_rng(m + 10 * k + 100 * n)
    a, b, r = rand(rng, m, k), rand(rng, k, n), rand(rng, m, n)
    da, db = ops.matmul_backward(a, b, r)
    assert_close(da, numerical_grad(lambda x: (ref.matmul(x, b) * r).sum(), a), 1e-4, 1e-5, "da")
    assert_close(db, numerical_grad(lambda x: (ref.matmul(a, x) * r).sum(), b), 1e-4, 1e-5, "db")


# --- add / gelu -------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 1000, 70001])
def test_add(ops, n):
    rng = np.random.default_rng(n)
    a, b = rand(rng, n), rand(rng, n)
    assert_close(ops.add(a, b), ref.f64(a) + ref.f64(b), 1e-6, 1e-6)


@pytest.mark.parametrize("n", [1, 9, 4097, 100003])
def test_gelu_forward(ops, n):
    rng = np.random.default_rng(n)
    x = rand(rng, n, scale=3.0)
    x[:4] = [0.0, -12.0, 12.0, 1e-3][:min(4, n)]
    assert_close(ops.gelu(x), ref.gelu(x), 1e-5, 2e-6)


@pytest.mark.parametrize("n", [1, 11, 257])
def test_gelu_backward(ops, n):
    rng = np.random.default_rng(n)
    x, r = rand(rng, n, scale=2.0), rand(rng, n)
    expected = numerical_grad(lambda v: (ref.gelu(v) * r).sum(), x)
    assert_close(ops.gelu_backward(x, r), expected, 1e-4, 1e-5)


# --- softmax ----------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1,), (17,), (1, 1), (3, 5), (9, 50257), (33, 129)])
def test_softmax_forward(ops, shape):
    rng = np.random.default_rng(len(shape) * 7 + shape[-1])
    x = rand(rng, *shape, scale=4.0)
    assert_close(ops.softmax(x), ref.softmax(x), 1e-5, 1e-7)


@pytest.mark.parametrize("shape", [(5,), (3, 7), (4, 13)])
def test_softmax_backward(ops, shape):
    rng = np.random.default_rng(shape[-1])
    x, r = rand(rng, *shape, scale=2.0), rand(rng, *shape)
    y = ref.softmax(x).astype(np.float32)
    expected = numerical_grad(lambda v: (ref.softmax(v) * r).sum(), x)
    assert_close(ops.softmax_backward(y, r), expected, 1e-4, 1e-6)


# --- layernorm --------------------------------------------------------------
@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 7), (5, 768), (33, 65), (2, 1600)])
def test_layernorm_forward(ops, rows, cols):
    rng = np.random.default_rng(rows * cols)
    x = rand(rng, rows, cols, scale=3.0) + 2.0
    g, b = rand(rng, cols), rand(rng, cols)
    assert_close(ops.layernorm(x, g, b), ref.layernorm(x, g, b), 1e-4, 2e-5)


@pytest.mark.parametrize("rows,cols", [(1, 3), (4, 7), (3, 17)])
def test_layernorm_backward(ops, rows, cols):
    rng = np.random.default_rng(rows + cols)
    x, r = rand(rng, rows, cols), rand(rng, rows, cols)
    g, b = rand(rng, cols), rand(rng, cols)
    dx, dg, db = ops.layernorm_backward(x, r, g)
    assert_close(dx, numerical_grad(lambda v: (ref.layernorm(v, g, b) * r).sum(), x),
                 1e-3, 1e-4, "dx")
    assert_close(dg, numerical_grad(lambda v: (ref.layernorm(x, v, b) * r).sum(), g),
                 1e-3, 1e-4, "dgamma")
    assert_close(db, numerical_grad(lambda v: (ref.layernorm(x, g, v) * r).sum(), b),
                 1e-4, 1e-5, "dbeta")


def test_layernorm_eps(ops):
    x = np.array([[1, 2, 3, 4]], np.float32)
    g, b = np.ones(4, np.float32), np.zeros(4, np.float32)
    assert_close(ops.layernorm(x, g, b, 0.5), ref.layernorm(x, g, b, 0.5), 1e-5, 1e-6)


# --- cross-entropy ----------------------------------------------------------
@pytest.mark.parametrize("rows,V", [(1, 1), (1, 10), (4, 50257), (7, 33)])
def test_cross_entropy_forward(ops, rows, V):
    rng = np.random.default_rng(rows * V)
    logits = rand(rng, rows, V, scale=3.0)
    targets = rng.integers(0, V, rows)
    expected = ref.cross_entropy(logits, targets)
    assert ops.cross_entropy(logits, targets) == pytest.approx(expected, rel=1e-5, abs=1e-5)
    if rows == 1:  # the single-target overload
        got = ops.cross_entropy(logits.reshape(-1), np.int64(targets[0]))
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("rows,V", [(1, 6), (3, 5), (2, 11)])
def test_cross_entropy_backward(ops, rows, V):
    rng = np.random.default_rng(rows + V)
    logits = rand(rng, rows, V, scale=2.0)
    targets = rng.integers(0, V, rows)
    expected = numerical_grad(lambda v: ref.cross_entropy(v, targets), logits)
    assert_close(ops.cross_entropy_backward(logits, targets), expected, 1e-4, 1e-6)
    if rows == 1:
        got = ops.cross_entropy_backward(logits.reshape(-1), np.int64(targets[0]))
        assert_close(got, expected.reshape(-1), 1e-4, 1e-6)


# --- attention --------------------------------------------------------------
def attention_params(rng, D):
    return (rand(rng, D, 3 * D, scale=0.3), rand(rng, 3 * D, scale=0.1),
            rand(rng, D, D, scale=0.3), rand(rng, D, scale=0.1))


@pytest.mark.parametrize("T,D,H", [(1, 4, 1), (5, 8, 2), (7, 12, 3), (33, 48, 4), (64, 96, 12)])
def test_attention_forward(ops, T, D, H):
    rng = np.random.default_rng(T * D * H)
    x = rand(rng, T, D)
    wq, bq, wo, bo = attention_params(rng, D)
    assert_close(ops.attention(x, wq, bq, wo, bo, H), ref.attention(x, wq, bq, wo, bo, H),
                 1e-4, 1e-5)


@pytest.mark.parametrize("T,D,H", [(1, 2, 1), (4, 6, 2), (5, 9, 3)])
def test_attention_backward(ops, T, D, H):
    rng = np.random.default_rng(T + D + H)
    x, r = rand(rng, T, D), rand(rng, T, D)
    wq, bq, wo, bo = attention_params(rng, D)
    dx, dwq, dbq, dwo, dbo = ops.attention_backward(x, wq, bq, wo, bo, r, H)

    def loss(**kw):
        args = dict(x=x, w_qkv=wq, b_qkv=bq, w_o=wo, b_o=bo)
        args.update(kw)
        return (ref.attention(args["x"], args["w_qkv"], args["b_qkv"], args["w_o"], args["b_o"],
                              H) * r).sum()

    assert_close(dx, numerical_grad(lambda v: loss(x=v), x), 1e-3, 1e-5, "dx")
    assert_close(dwq, numerical_grad(lambda v: loss(w_qkv=v), wq), 1e-3, 1e-5, "dw_qkv")
    assert_close(dbq, numerical_grad(lambda v: loss(b_qkv=v), bq), 1e-3, 1e-5, "db_qkv")
    assert_close(dwo, numerical_grad(lambda v: loss(w_o=v), wo), 1e-3, 1e-5, "dw_o")
    assert_close(dbo, numerical_grad(lambda v: loss(b_o=v), bo), 1e-3, 1e-5, "db_o")


# --- dropout ----------------------------------------------------------------
@pytest.mark.parametrize("n,p", [(1, 0.5), (1000, 0.1), (100003, 0.3)])
def test_dropout_forward(ops, n, p):
    rng = np.random.default_rng(n)
    x = rand(rng, n) + 3.0          # no zeros in x
    y = ops.dropout(x, p, seed=42)
    kept = y != 0
    assert_close(y[kept], x[kept] / (1 - p), 1e-6, 0)
    if n > 1000:
        assert abs(kept.mean() - (1 - p)) < 0.01
    np.testing.assert_array_equal(y, ops.dropout(x, p, seed=42))       # same seed, same mask
    if n > 1:
        assert not np.array_equal(y, ops.dropout(x, p, seed=43))
    np.testing.assert_array_equal(ops.dropout(x, p, seed=42, training=False), x)


@pytest.mark.parametrize("n,p", [(7, 0.5), (300, 0.2)])
def test_dropout_backward(ops, n, p):
    rng = np.random.default_rng(n)
    x, r = rand(rng, n) + 3.0, rand(rng, n)
    seed = 7

    def f(v):  # dropout with a fixed mask is linear, so differences are exact
        return (ref.f64(ops.dropout(v.astype(np.float32), p, seed)) * r).sum()
    expected = numerical_grad(f, x, h=0.25)
    assert_close(ops.dropout_backward_seeded(r, p, seed), expected, 1e-4, 1e-5, "seeded")
    y = ops.dropout(x, p, seed)
    assert_close(ops.dropout_backward_masked(x, y, r, p), expected, 1e-4, 1e-5, "masked")


# --- layout and constants ---------------------------------------------------
@pytest.mark.parametrize("r,c", [(1, 1), (1, 9), (9, 1), (33, 65), (100, 31)])
def test_transpose(ops, r, c):
    x = np.arange(r * c, dtype=np.float32).reshape(r, c)
    np.testing.assert_array_equal(ops.transpose(x), x.T)


def test_zeros_ones_like(ops):
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(ops.zeros_like(x), np.zeros(10, np.float32))
    np.testing.assert_array_equal(ops.ones_like(x), np.ones(10, np.float32))


# --- optimisation -----------------------------------------------------------
@pytest.mark.parametrize("n", [1, 17, 70000])
def test_adamw_step(ops, n):
    rng = np.random.default_rng(n)
    w, m = rand(rng, n), rand(rng, n, scale=0.1)
    v = np.abs(rand(rng, n, scale=0.1))
    for step in (1, 2, 10):
        g = rand(rng, n)
        w2, m2, v2 = ops.adamw_step(w, g, m, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, step)
        ew, em, ev = ref.adamw(w, g, m, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, step)
        assert_close(w2, ew, 1e-5, 1e-6, "w")
        assert_close(m2, em, 1e-5, 1e-7, "m")
        assert_close(v2, ev, 1e-5, 1e-8, "v")
        w, m, v = w2, m2, v2


@pytest.mark.parametrize("n,max_norm", [(5, 0.1), (1000, 1.0), (1000, 1e6)])
def test_grad_clip(ops, n, max_norm):
    g = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    out = ops.grad_clip(g, max_norm)
    assert_close(out, ref.grad_clip(g, max_norm), 1e-5, 1e-7)
    assert np.sqrt((out.astype(np.float64) ** 2).sum()) <= max_norm * (1 + 1e-5)


@pytest.mark.parametrize("step", [0, 1, 9, 10, 11, 50, 99, 100, 101, 1000])
def test_lr_schedule(ops, step):
    got = ops.lr_schedule(step, 10, 100, 6e-4, 6e-5)
    assert got == pytest.approx(ref.lr_schedule(step, 10, 100, 6e-4, 6e-5), rel=1e-6)
