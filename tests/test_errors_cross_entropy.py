"""Bad input to pg_llm_cross_entropy and its backward (both overloads)."""
import pytest

from helpers import assert_sql_error, tensor

L = tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])   # 2 rows of 3, or 1 row of 6


@pytest.mark.parametrize("fn", ["pg_llm_cross_entropy", "pg_llm_cross_entropy_backward"])
def test_target_out_of_range(conn, fn):
    assert_sql_error(conn, f"select {fn}(%s, 6)", (L,), "22003", "target 6 is outside")
    assert_sql_error(conn, f"select {fn}(%s, -1)", (L,), "22003", "target -1 is outside")
    assert_sql_error(conn, f"select {fn}(%s, array[0, 3])", (L,), "22003",
                     "target 3 is outside the vocabulary [0, 3)")


@pytest.mark.parametrize("fn", ["pg_llm_cross_entropy", "pg_llm_cross_entropy_backward"])
def test_rows_do_not_divide(conn, fn):
    assert_sql_error(conn, f"select {fn}(%s, array[0, 1, 2, 0])", (L,), "22000",
                     "not a positive multiple of the 4 targets")


def test_empty_targets(conn):
    assert_sql_error(conn, "select pg_llm_cross_entropy(%s, '{}'::int[])", (L,), "22023", "empty")


def test_null_target_element(conn):
    assert_sql_error(conn, "select pg_llm_cross_entropy(%s, array[0, null]::int[])", (L,),
                     "22004", "NULL")


def test_empty_logits(conn):
    assert_sql_error(conn, "select pg_llm_cross_entropy(''::bytea, 0)", (), "22000", "logits hold 0")


def test_inf_logit(conn):
    assert_sql_error(conn, "select pg_llm_cross_entropy(%s, 0)", (tensor([1, float("inf")]),),
                     "22P01", "logits contains")
