"""Bad input to the elementwise and layout ops: add, gelu, transpose,
zeros/ones_like and the float4[] <-> bytea conversions."""
import pytest

from helpers import assert_sql_error, tensor, untensor


def test_add_size_mismatch(conn):
    assert_sql_error(conn, "select pg_llm_add(%s, %s)", (tensor([1, 2]), tensor([1])),
                     "22000", "differ in size")


@pytest.mark.parametrize("fn", ["pg_llm_add(%s, %s)", "pg_llm_gelu_backward(%s, %s)"])
def test_truncated_bytea(conn, fn):
    assert_sql_error(conn, f"select {fn}", (b"\0" * 7, b"\0" * 7), "22P03", "multiple of 4")


def test_gelu_nonfinite(conn):
    assert_sql_error(conn, "select pg_llm_gelu(%s)", (tensor([1, float("-inf")]),),
                     "22P01", "x contains NaN or Infinity")


def test_gelu_empty_is_empty(conn):
    assert conn.execute("select length(pg_llm_gelu(''::bytea))").fetchone()[0] == 0


def test_transpose_shape(conn):
    assert_sql_error(conn, "select pg_llm_transpose(%s, 2, 2)", (tensor([1, 2, 3]),),
                     "22000", "needs 4")
    assert_sql_error(conn, "select pg_llm_transpose(%s, 0, 3)", (tensor([1, 2, 3]),),
                     "22023", "must be positive")


def test_zeros_like_truncated(conn):
    assert_sql_error(conn, "select pg_llm_zeros_like(%s)", (b"\0" * 5,), "22P03", "multiple of 4")


def test_tensor_rejects_null_elements(conn):
    assert_sql_error(conn, "select pg_llm_tensor(array[1, null]::float4[])", (),
                     "22004", "NULL")


def test_tensor_rejects_multidim(conn):
    assert_sql_error(conn, "select pg_llm_tensor(array[[1,2],[3,4]]::float4[])", (),
                     "2202E", "one-dimensional")


def test_tensor_roundtrip_keeps_special_values(conn):
    vals = conn.execute("select pg_llm_tensor_array(pg_llm_tensor("
                        "array[1.5, 'NaN', '-Infinity', 0]::float4[]))").fetchone()[0]
    assert vals[0] == 1.5 and vals[1] != vals[1] and vals[2] == float("-inf") and vals[3] == 0


def test_tensor_array_truncated(conn):
    assert_sql_error(conn, "select pg_llm_tensor_array(%s)", (b"\0" * 6,), "22P03", "multiple of 4")


def test_empty_array(conn):
    assert conn.execute("select length(pg_llm_tensor('{}'::float4[]))").fetchone()[0] == 0
    assert conn.execute("select pg_llm_tensor_array(''::bytea)").fetchone()[0] == []
    assert untensor(conn.execute("select pg_llm_tensor(array[2]::float4[])").fetchone()[0])[0] == 2
