"""Bad input to pg_llm_dropout and its backward forms."""
import pytest

from helpers import assert_sql_error, tensor

X = tensor([1, 2, 3])


@pytest.mark.parametrize("p", ["-0.1", "1.5", "'NaN'"])
def test_p_domain(conn, p):
    assert_sql_error(conn, f"select pg_llm_dropout(%s, {p}::float4, true, 1)", (X,),
                     "22023", "p must lie in [0, 1]")
    assert_sql_error(conn, f"select pg_llm_dropout_backward(%s, {p}::float4, true, 1)", (X,),
                     "22023", "p must lie in [0, 1]")


def test_truncated(conn):
    assert_sql_error(conn, "select pg_llm_dropout(%s, 0.5, true, 1)", (b"\0" * 3,),
                     "22P03", "multiple of 4")


def test_masked_backward_sizes(conn):
    assert_sql_error(conn, "select pg_llm_dropout_backward(%s, %s, %s, 0.5, true)",
                     (X, tensor([1, 2]), X), "22000", "differ in size")


def test_p_one_drops_everything(conn):
    out = conn.execute("select pg_llm_tensor_array(pg_llm_dropout(%s, 1, true, 5))", (X,)).fetchone()[0]
    assert out == [0, 0, 0]


def test_unseeded_is_volatile(conn):
    x = tensor([1.0] * 256)
    a, b = conn.execute("select pg_llm_dropout(%s, 0.5), pg_llm_dropout(%s, 0.5)", (x, x)).fetchone()
    assert a != b
    vol = conn.execute("select provolatile from pg_proc where proname = 'pg_llm_dropout' "
                       "order by pronargs").fetchall()
    assert [v[0] for v in vol] == ["v", "i"]
