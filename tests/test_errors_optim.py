"""Bad input to pg_llm_adamw_step, pg_llm_grad_clip and pg_llm_lr_schedule."""
import pytest

from helpers import assert_sql_error, tensor

W = tensor([1, 2, 3])
ADAMW = "select * from pg_llm_adamw_step(%s, %s, %s, %s, %s::float4, %s::float4, %s::float4, %s::float4, %s::float4, %s)"


def adamw_args(**over):
    a = dict(w=W, g=W, m=W, v=W, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0, step=1)
    a.update(over)
    return tuple(a.values())


def test_valid(conn):
    assert conn.execute(ADAMW, adamw_args()).fetchone()[0] is not None


@pytest.mark.parametrize("over,expect", [
    (dict(lr=-1.0), "lr must lie in"),
    (dict(beta1=1.0), "beta1 must lie in [0, 1)"),
    (dict(beta2=-0.5), "beta2 must lie in"),
    (dict(eps=0.0), "eps must lie in (0"),
    (dict(wd=-0.1), "weight_decay must lie in"),
    (dict(lr=float("nan")), "lr must lie in"),
])
def test_hyper_parameters(conn, over, expect):
    assert_sql_error(conn, ADAMW, adamw_args(**over), "22023", expect)


def test_step_counts_from_one(conn):
    assert_sql_error(conn, ADAMW, adamw_args(step=0), "22023", "step counts from 1")


def test_state_sizes(conn):
    assert_sql_error(conn, ADAMW, adamw_args(m=tensor([1, 2])), "22000", "weight and m differ")
    assert_sql_error(conn, ADAMW, adamw_args(g=b"\0" * 5), "22P03", "multiple of 4")


def test_nan_grad(conn):
    assert_sql_error(conn, ADAMW, adamw_args(g=tensor([1, float("nan"), 3])), "22P01", "grad contains")


@pytest.mark.parametrize("max_norm", ["0", "-1", "'NaN'"])
def test_grad_clip_max_norm(conn, max_norm):
    assert_sql_error(conn, f"select pg_llm_grad_clip(%s, {max_norm}::float4)", (W,),
                     "22023", "max_norm must lie in")


def test_lr_schedule_domain(conn):
    assert_sql_error(conn, "select pg_llm_lr_schedule(-1, 10, 100, 1e-3)", (), "22023", "must not be negative")
    assert_sql_error(conn, "select pg_llm_lr_schedule(1, 10, 100, -1e-3)", (), "22023", "lr_max must lie in")
    assert_sql_error(conn, "select pg_llm_lr_schedule(1, 10, 100, 1e-3, 1e-2)", (), "22023", "lr_min must lie in")
