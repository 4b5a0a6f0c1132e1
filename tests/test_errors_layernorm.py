"""Bad input to pg_llm_layernorm and its backward."""
from helpers import assert_sql_error, tensor

X = tensor([1, 2, 3, 4, 5, 6])
G3 = tensor([1, 1, 1])
B3 = tensor([0, 0, 0])


def test_x_not_multiple_of_gamma(conn):
    assert_sql_error(conn, "select pg_llm_layernorm(%s, %s, %s)", (tensor([1] * 5), G3, B3),
                     "22000", "not a positive multiple")


def test_gamma_beta_mismatch(conn):
    assert_sql_error(conn, "select pg_llm_layernorm(%s, %s, %s)", (X, G3, tensor([0, 0])),
                     "22000", "differ in size")


def test_empty_gamma(conn):
    assert_sql_error(conn, "select pg_llm_layernorm(%s, ''::bytea, ''::bytea)", (X,),
                     "22023", "empty")


def test_bad_eps(conn):
    for eps in ("0", "-1", "'NaN'", "'Infinity'"):
        assert_sql_error(conn, f"select pg_llm_layernorm(%s, %s, %s, {eps}::float4)", (X, G3, B3),
                         "22023", "eps must be")


def test_nonfinite_gamma(conn):
    assert_sql_error(conn, "select pg_llm_layernorm(%s, %s, %s)",
                     (X, tensor([1, float("nan"), 1]), B3), "22P01", "gamma contains")


def test_backward_dy_mismatch(conn):
    assert_sql_error(conn, "select * from pg_llm_layernorm_backward(%s, %s, %s)",
                     (X, tensor([1, 2]), G3), "22000", "differ in size")
