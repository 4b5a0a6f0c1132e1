"""The tensor ops behind one interface, reached two ways: through the Python
kernels (pg_llm_cy.kernels) and through SQL on a live server.  test_ops.py
runs every check against both, so the server's path is tested as fully as
the kernels themselves."""
import numpy as np

from helpers import sql_row, sql_value, tensor, untensor
from pg_llm_cy import kernels as K


class PythonOps:
    name = "python"

    def matmul(self, a, b):
        return K.matmul(a, b)

    def matmul_backward(self, a, b, dy):
        return K.matmul_backward(a, b, dy)

    def add(self, a, b):
        return K.add(a, b)

    def gelu(self, x):
        return K.gelu(x)

    def gelu_backward(self, x, dy):
        return K.gelu_backward(x, dy)

    def softmax(self, x):
        return K.softmax(x)

    def softmax_backward(self, y, dy):
        return K.softmax_backward(y, dy)

    def layernorm(self, x, g, b, eps=1e-5):
        return K.layernorm(x, g, b, eps)

    def layernorm_backward(self, x, dy, g, eps=1e-5):
        return K.layernorm_backward(x, dy, g, eps)

    def cross_entropy(self, logits, targets):
        return K.cross_entropy(logits, targets)

    def cross_entropy_backward(self, logits, targets):
        return K.cross_entropy_backward(logits, targets)

    def attention(self, x, wq, bq, wo, bo, n_head):
        return K.attention(x, wq, bq, wo, bo, n_head)

    def attention_backward(self, x, wq, bq, wo, bo, dy, n_head):
        return K.attention_backward(x, wq, bq, wo, bo, dy, n_head)

    def dropout(self, x, p, seed, training=True):
        return K.dropout(x, p, seed, training)

    def dropout_backward_seeded(self, dy, p, seed, training=True):
        return K.dropout_backward(dy, p, seed, training)

    def dropout_backward_masked(self, x, y, dy, p):
        return K.dropout_backward_masked(x, y, dy, p)

    def transpose(self, x):
        return K.transpose(x)

    def zeros_like(self, x):
        return K.zeros_like(x)

    def ones_like(self, x):
        return K.ones_like(x)

    def adamw_step(self, w, g, m, v, lr, beta1, beta2, eps, wd, step):
        return K.adamw_step(w, g, m, v, lr, beta1, beta2, eps, wd, step)

    def grad_clip(self, g, max_norm):
        return K.grad_clip(g, max_norm)

    def lr_schedule(self, step, warmup, total, lr_max, lr_min=0.0):
        return K.lr_schedule(step, warmup, total, lr_max, lr_min)


class SqlOps:
    name = "sql"

    def __init__(self, conn):
        self.conn = conn

    def _v(self, q, params):
        return sql_value(self.conn, q, params)

    def _r(self, q, params):
        return sql_row(self.conn, q, params)

    def matmul(self, a, b):
        (m, k), n = a.shape, b.shape[1]
        return untensor(self._v("select pg_llm_matmul(%s, %s, %s, %s, %s)",
                                (tensor(a), tensor(b), m, k, n)), (m, n))

    def matmul_backward(self, a, b, dy):
        (m, k), n = a.shape, b.shape[1]
        da, db = self._r("select * from pg_llm_matmul_backward(%s, %s, %s, %s, %s, %s)",
                         (tensor(a), tensor(b), tensor(dy), m, k, n))
        return untensor(da, (m, k)), untensor(db, (k, n))

    def add(self, a, b):
        return untensor(self._v("select pg_llm_add(%s, %s)", (tensor(a), tensor(b))), a.shape)

    def gelu(self, x):
        return untensor(self._v("select pg_llm_gelu(%s)", (tensor(x),)), x.shape)

    def gelu_backward(self, x, dy):
        return untensor(self._v("select pg_llm_gelu_backward(%s, %s)", (tensor(x), tensor(dy))),
                        x.shape)

    def softmax(self, x):
        if x.ndim == 1:
            return untensor(self._v("select pg_llm_softmax(%s)", (tensor(x),)), x.shape)
        rows, cols = x.shape
        return untensor(self._v("select pg_llm_softmax(%s, %s, %s)", (tensor(x), rows, cols)),
                        x.shape)

    def softmax_backward(self, y, dy):
        if y.ndim == 1:
            return untensor(self._v("select pg_llm_softmax_backward(%s, %s)",
                                    (tensor(y), tensor(dy))), y.shape)
        rows, cols = y.shape
        return untensor(self._v("select pg_llm_softmax_backward(%s, %s, %s, %s)",
                                (tensor(y), tensor(dy), rows, cols)), y.shape)

    def layernorm(self, x, g, b, eps=1e-5):
        return untensor(self._v("select pg_llm_layernorm(%s, %s, %s, %s::float4)",
                                (tensor(x), tensor(g), tensor(b), eps)), x.shape)

    def layernorm_backward(self, x, dy, g, eps=1e-5):
        dx, dg, db = self._r("select * from pg_llm_layernorm_backward(%s, %s, %s, %s::float4)",
                             (tensor(x), tensor(dy), tensor(g), eps))
        return untensor(dx, x.shape), untensor(dg), untensor(db)

    def cross_entropy(self, logits, targets):
        t = [int(v) for v in np.asarray(targets).reshape(-1)]
        if np.ndim(targets) == 0:
            return self._v("select pg_llm_cross_entropy(%s, %s::int)", (tensor(logits), t[0]))
        return self._v("select pg_llm_cross_entropy(%s, %s::int[])", (tensor(logits), t))

    def cross_entropy_backward(self, logits, targets):
        t = [int(v) for v in np.asarray(targets).reshape(-1)]
        if np.ndim(targets) == 0:
            b = self._v("select pg_llm_cross_entropy_backward(%s, %s::int)", (tensor(logits), t[0]))
        else:
            b = self._v("select pg_llm_cross_entropy_backward(%s, %s::int[])",
                        (tensor(logits), t))
        return untensor(b, np.shape(logits))

    def attention(self, x, wq, bq, wo, bo, n_head):
        T, D = x.shape
        return untensor(self._v("select pg_llm_attention(%s, %s, %s, %s, %s, %s, %s, %s)",
                                (tensor(x), tensor(wq), tensor(bq), tensor(wo), tensor(bo),
                                 n_head, T, D)), (T, D))

    def attention_backward(self, x, wq, bq, wo, bo, dy, n_head):
        T, D = x.shape
        r = self._r("select * from pg_llm_attention_backward(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (tensor(x), tensor(wq), tensor(bq), tensor(wo), tensor(bo), tensor(dy),
                     n_head, T, D))
        return (untensor(r[0], (T, D)), untensor(r[1], (D, 3 * D)), untensor(r[2]),
                untensor(r[3], (D, D)), untensor(r[4]))

    def dropout(self, x, p, seed, training=True):
        return untensor(self._v("select pg_llm_dropout(%s, %s::float4, %s, %s)",
                                (tensor(x), p, training, seed)), x.shape)

    def dropout_backward_seeded(self, dy, p, seed, training=True):
        return untensor(self._v("select pg_llm_dropout_backward(%s, %s::float4, %s, %s)",
                                (tensor(dy), p, training, seed)), dy.shape)

    def dropout_backward_masked(self, x, y, dy, p):
        return untensor(self._v("select pg_llm_dropout_backward(%s, %s, %s, %s::float4, true)",
                                (tensor(x), tensor(y), tensor(dy), p)), x.shape)

    def transpose(self, x):
        r, c = x.shape
        return untensor(self._v("select pg_llm_transpose(%s, %s, %s)", (tensor(x), r, c)), (c, r))

    def zeros_like(self, x):
        return untensor(self._v("select pg_llm_zeros_like(%s)", (tensor(x),)), x.shape)

    def ones_like(self, x):
        return untensor(self._v("select pg_llm_ones_like(%s)", (tensor(x),)), x.shape)

    def adamw_step(self, w, g, m, v, lr, beta1, beta2, eps, wd, step):
        r = self._r("select * from pg_llm_adamw_step(%s, %s, %s, %s, %s::float4, %s::float4, %s::float4, %s::float4, %s::float4, %s)",
                    (tensor(w), tensor(g), tensor(m), tensor(v), lr, beta1, beta2, eps, wd, step))
        return tuple(untensor(b, np.shape(w)) for b in r)

    def grad_clip(self, g, max_norm):
        return untensor(self._v("select pg_llm_grad_clip(%s, %s::float4)", (tensor(g), max_norm)),
                        np.shape(g))

    def lr_schedule(self, step, warmup, total, lr_max, lr_min=0.0):
        return self._v("select pg_llm_lr_schedule(%s, %s, %s, %s::float4, %s::float4)",
                       (step, warmup, total, lr_max, lr_min))
