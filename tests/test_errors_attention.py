"""Bad input to pg_llm_attention and its backward."""
import numpy as np
import pytest

from helpers import assert_sql_error, tensor

T, D = 3, 4


def args(**over):
    a = dict(x=np.zeros((T, D)), w_qkv=np.zeros((D, 3 * D)), b_qkv=np.zeros(3 * D),
             w_o=np.zeros((D, D)), b_o=np.zeros(D))
    a.update(over)
    return tuple(tensor(a[k]) for k in ("x", "w_qkv", "b_qkv", "w_o", "b_o"))


Q = "select pg_llm_attention(%s, %s, %s, %s, %s, %s, %s, %s)"


def test_valid(conn):
    assert conn.execute(Q, args() + (2, T, D)).fetchone()[0] is not None


@pytest.mark.parametrize("nh", [3, 0, -2])
def test_n_head_must_divide_D(conn, nh):
    assert_sql_error(conn, Q, args() + (nh, T, D), "22023", "must be positive and divide D")


@pytest.mark.parametrize("name,bad,expect", [
    ("x", np.zeros((T, D + 1)), "x holds 15"),
    ("w_qkv", np.zeros((D, D)), "w_qkv holds 16"),
    ("b_qkv", np.zeros(D), "b_qkv holds 4"),
    ("w_o", np.zeros((D, 3)), "w_o holds 12"),
    ("b_o", np.zeros(3), "b_o holds 3"),
])
def test_operand_shapes(conn, name, bad, expect):
    assert_sql_error(conn, Q, args(**{name: bad}) + (2, T, D), "22000", expect)


def test_dims(conn):
    assert_sql_error(conn, Q, args() + (2, 0, D), "22023", "dimension T must be positive")
    assert_sql_error(conn, Q, args() + (1, T, 100000), "54000", "too large")


def test_nan_weight(conn):
    w = np.zeros((D, D))
    w[1, 2] = np.nan
    assert_sql_error(conn, Q, args(w_o=w) + (2, T, D), "22P01", "w_o contains")


def test_backward_grad_output_shape(conn):
    assert_sql_error(conn, "select * from pg_llm_attention_backward(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                     args() + (tensor(np.zeros(5)), 2, T, D), "22000", "grad_output holds 5")
