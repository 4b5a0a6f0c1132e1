"""float64 numpy references of every op, and central finite differences.

Kernels (float32) are checked against these forwards; their backwards are
checked against finite differences of these forwards, so a wrong backward
formula cannot hide behind a matching wrong reference.
"""
import numpy as np

GELU_K = np.sqrt(2.0 / np.pi)


def f64(x):
    return np.asarray(x, dtype=np.float64)


def matmul(a, b):
    return f64(a) @ f64(b)


def gelu(x):
    x = f64(x)
    return 0.5 * x * (1.0 + np.tanh(GELU_K * (x + 0.044715 * x ** 3)))


def softmax(x):
    x = f64(x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layernorm(x, gamma, beta, eps=1e-5):
    x = f64(x)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * f64(gamma) + f64(beta)


def cross_entropy(logits, targets):
    """mean over rows of logsumexp - logit[target]"""
    x = f64(logits).reshape(len(targets), -1)
    m = x.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - x[np.arange(len(targets)), targets]))


def attention(x, w_qkv, b_qkv, w_o, b_o, n_head):
    x = f64(x)
    T, D = x.shape
    hs = D // n_head
    qkv = x @ f64(w_qkv) + f64(b_qkv)
    q, k, v = qkv[:, :D], qkv[:, D:2 * D], qkv[:, 2 * D:]
    out = np.zeros((T, D))
    mask = np.tril(np.ones((T, T), dtype=bool))
    for h in range(n_head):
        sl = slice(h * hs, (h + 1) * hs)
        s = q[:, sl] @ k[:, sl].T / np.sqrt(hs)
        s = np.where(mask, s, -np.inf)
        out[:, sl] = softmax(s) @ v[:, sl]
    return out @ f64(w_o) + f64(b_o)


def adamw(w, g, m, v, lr, beta1, beta2, eps, wd, step):
    w, g, m, v = f64(w), f64(g), f64(m), f64(v)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    mhat = m / (1 - beta1 ** step)
    vhat = v / (1 - beta2 ** step)
    w = w - lr * (mhat / (np.sqrt(vhat) + eps) + wd * w)
    return w, m, v


def lr_schedule(step, warmup, total, lr_max, lr_min=0.0):
    """nanoGPT's get_lr"""
    if step < warmup:
        return lr_max * (step + 1) / (warmup + 1)
    if step > total:
        return lr_min
    ratio = (step - warmup) / (total - warmup)
    return lr_min + 0.5 * (1.0 + np.cos(np.pi * ratio)) * (lr_max - lr_min)


def grad_clip(g, max_norm):
    g = f64(g)
    norm = np.sqrt((g * g).sum())
    return g * min(1.0, max_norm / (norm + 1e-6))


def numerical_grad(f, x, h=1e-3):
    """Central differences of scalar f at x (float64), element by element."""
    x = f64(x).copy()
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f(x)
        flat[i] = old - h
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return grad


def assert_close(actual, expected, rtol=1e-4, atol=1e-5, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape or actual.size == expected.size, \
        f"{what}: shape {actual.shape} vs {expected.shape}"
    np.testing.assert_allclose(actual.reshape(expected.shape), expected, rtol=rtol, atol=atol,
                               err_msg=what)
