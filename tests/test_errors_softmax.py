"""Bad input to pg_llm_softmax and its backward."""
from helpers import assert_sql_error, tensor


def test_empty_row(conn):
    assert_sql_error(conn, "select pg_llm_softmax(''::bytea)", (), "22023", "empty")


def test_rows_cols_mismatch(conn):
    assert_sql_error(conn, "select pg_llm_softmax(%s, 2, 3)", (tensor([1] * 5),),
                     "22000", "shape (2, 3) needs 6")


def test_nonpositive_rows(conn):
    assert_sql_error(conn, "select pg_llm_softmax(%s, -1, 5)", (tensor([1] * 5),),
                     "22023", "must be positive")


def test_nan(conn):
    assert_sql_error(conn, "select pg_llm_softmax(%s)", (tensor([1, float("nan")]),),
                     "22P01", "NaN")


def test_backward_mismatch(conn):
    assert_sql_error(conn, "select pg_llm_softmax_backward(%s, %s)", (tensor([1, 2]), tensor([1])),
                     "22000", "differ in size")
    assert_sql_error(conn, "select pg_llm_softmax_backward(%s, %s, 1, 3)",
                     (tensor([1, 2]), tensor([1, 2])), "22000", "needs 3")
