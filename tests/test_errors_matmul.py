"""Bad input to pg_llm_matmul and pg_llm_matmul_backward: a clear ERROR each."""
import pytest

from helpers import assert_sql_error, tensor, untensor

F4 = b"\0\0\x80?"          # 1.0f


def test_length_not_multiple_of_4(conn):
    assert_sql_error(conn, "select pg_llm_matmul(%s, %s, 1, 1, 1)", (b"\0\0\0", F4),
                     "22P03", "not a multiple of 4")


def test_length_does_not_match_shape(conn):
    assert_sql_error(conn, "select pg_llm_matmul(%s, %s, 2, 1, 1)", (F4, F4),
                     "22000", "shape (2, 1) needs 2")
    assert_sql_error(conn, "select pg_llm_matmul(%s, %s, 1, 1, 2)", (F4, F4),
                     "22000", "b holds 1")


@pytest.mark.parametrize("m,k,n,name", [(0, 1, 1, "m"), (1, -3, 1, "k"), (1, 1, 0, "n")])
def test_nonpositive_dims(conn, m, k, n, name):
    assert_sql_error(conn, "select pg_llm_matmul(%s, %s, %s, %s, %s)", (F4, F4, m, k, n),
                     "22023", f"dimension {name} must be positive")


def test_size_overflow(conn):
    big = 2_000_000_000
    assert_sql_error(conn, "select pg_llm_matmul(%s, %s, %s, %s, 1)", (F4, F4, big, big),
                     "54000", "too large")


def test_empty_tensor(conn):
    assert_sql_error(conn, "select pg_llm_matmul(''::bytea, %s, 1, 1, 1)", (F4,),
                     "22000", "holds 0")


def test_nan_and_inf_rejected(conn):
    nan = tensor([float("nan")])
    inf = tensor([float("inf")])
    assert_sql_error(conn, "select pg_llm_matmul(%s, %s, 1, 1, 1)", (nan, F4), "22P01", "NaN")
    assert_sql_error(conn, "select pg_llm_matmul(%s, %s, 1, 1, 1)", (F4, inf), "22P01", "NaN")


def test_null_is_null(conn):
    assert conn.execute("select pg_llm_matmul(null, %s, 1, 1, 1)", (F4,)).fetchone()[0] is None


def test_backward_checks_dy(conn):
    assert_sql_error(conn, "select * from pg_llm_matmul_backward(%s, %s, %s, 1, 1, 1)",
                     (F4, F4, F4 + F4), "22000", "dy holds 2")


def test_valid_call_after_errors(conn):
    out = conn.execute("select pg_llm_matmul(%s, %s, 1, 1, 1)", (tensor([2.0]), tensor([3.0])))
    assert untensor(out.fetchone()[0])[0] == 6.0


def test_overflow_is_an_error(conn):
    big = tensor([1e30])
    assert_sql_error(conn, "select pg_llm_matmul(%s, %s, 1, 1, 1)", (big, big),
                     "22003", "overflows float32")


def test_nan_found_through_zero_operand(conn):
    # NaN * 0 is NaN: the output check still names the operand
    assert_sql_error(conn, "select pg_llm_matmul(%s, %s, 1, 2, 1)",
                     (tensor([float("nan"), 1]), tensor([0, 0])), "22P01", "a contains NaN")
