#!/usr/bin/env python3
"""GFLOP/s of pg_llm's matmul beside numpy's (OpenBLAS), in one run.

    python scripts/bench_kernels.py [--pg-config .pg/pg16/bin/pg_config | --dsn DSN]
                                    [--threads 1 2] [--seconds 1.0] [--no-sql]

Shapes are GPT-2's: (64x768)@(768x2304) ... (1x768)@(768x50257).  Each is
timed with 1 and 2 threads: numpy, pg_llm from Python (the same compiled
kernel as the server's), and pg_llm through SQL (a PL/pgSQL loop on the
server, so no client transfer is counted; the result's allocation is).
Best of several repetitions; the machine is shared, so compare the ratios.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are removed before numpy loads: they
force a slower OpenBLAS kernel.  The kernel OpenBLAS picked is printed.
"""
import os

for _var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):      # numpy side only
    os.environ.pop(_var, None)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

# the installed pg_llm_cy first; the source tree when it is not installed
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pg_llm_cy import kernels as K  # noqa: E402

SHAPES = [(64, 768, 2304), (64, 768, 3072), (64, 3072, 768), (64, 768, 50257),
          (512, 768, 3072), (1, 768, 50257)]

BENCH_FN = """
CREATE OR REPLACE FUNCTION pg_temp.bench_matmul(a bytea, b bytea, m int, k int, n int,
                                                seconds float8) RETURNS float8 AS $$
DECLARE
    r bytea; t0 timestamptz; best float8 := 1e9; iters int; i int; j int; dt float8;
BEGIN
    r := pg_llm_matmul(a, b, m, k, n);                       -- warm-up
    t0 := clock_timestamp();
    r := pg_llm_matmul(a, b, m, k, n);
    dt := extract(epoch from clock_timestamp() - t0);
    iters := greatest(1, least(1000, (seconds / 5 / greatest(dt, 1e-6))::int));
    FOR j IN 1..5 LOOP
        t0 := clock_timestamp();
        FOR i IN 1..iters LOOP
            r := pg_llm_matmul(a, b, m, k, n + 0 * i);
        END LOOP;
        best := least(best, extract(epoch from clock_timestamp() - t0) / iters);
    END LOOP;
    RETURN best;
END $$ LANGUAGE plpgsql;
"""


def best_time(fn, seconds):
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    iters = max(1, min(1000, int(seconds / 5 / once)))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t0) / iters)
    return best


def openblas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl)"
    for lib in threadpool_info():
        if lib.get("internal_api") == "openblas":
            return f"OpenBLAS {lib.get('version')} kernel {lib.get('architecture')}"
    return "no OpenBLAS found"


def numpy_threads(n):
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(n)
    except ImportError:
        import contextlib
        return contextlib.nullcontext()


def open_sql(args):
    if args.no_sql:
        return None, None
    from pg_llm_cy.cluster import open_server
    _, conn, cluster = open_server(args.dsn, args.pg_config)
    conn.execute(BENCH_FN)
    return conn, cluster


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pg-config", default=os.environ.get("PG_CONFIG", ".pg/pg16/bin/pg_config"))
    ap.add_argument("--dsn", help="an existing server with pg_llm installed")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=1.0, help="time budget per measurement")
    ap.add_argument("--no-sql", action="store_true")
    args = ap.parse_args()

    conn, cluster = open_sql(args)
    print(f"numpy {np.__version__}: {openblas_info()}")
    print(f"pg_llm kernels: {'AVX-512' if K.cpu_has_avx512() else 'AVX2'} micro-kernel")
    if conn is not None:
        print(f"server: {conn.execute('select version()').fetchone()[0].split(',')[0]}; "
              f"{conn.execute('select pg_llm_info()').fetchone()[0]}")
    head = f"{'shape':>22} {'thr':>3} {'numpy':>8} {'pg_llm py':>10} {'ratio':>6}"
    if conn is not None:
        head += f" {'pg_llm SQL':>11} {'ratio':>6}"
    print(head + "   (GFLOP/s)")
    rng = np.random.default_rng(0)
    try:
        for m, k, n in SHAPES:
            a = rng.standard_normal((m, k), dtype=np.float32)
            b = rng.standard_normal((k, n), dtype=np.float32)
            c = np.empty((m, n), np.float32)
            gflop = 2.0 * m * n * k / 1e9
            for nt in args.threads:
                with numpy_threads(nt):
                    t_np = best_time(lambda: np.matmul(a, b, out=c), args.seconds)
                K.set_num_threads(nt)
                t_py = best_time(lambda: K.gemm(a, b, c), args.seconds)
                line = (f"{f'({m}x{k})@({k}x{n})':>22} {nt:>3} {gflop / t_np:8.1f} "
                        f"{gflop / t_py:10.1f} {t_np / t_py:6.2f}")
                if conn is not None:
                    conn.execute(f"SET pg_llm.num_threads = {nt}")
                    t_sql = conn.execute("select pg_temp.bench_matmul(%s, %s, %s, %s, %s, %s)",
                                         (a.tobytes(), b.tobytes(), m, k, n, args.seconds)
                                         ).fetchone()[0]
                    line += f" {gflop / t_sql:11.1f} {t_np / t_sql:6.2f}"
                print(line, flush=True)
    finally:
        if conn is not None:
            conn.close()
        if cluster is not None:
            cluster.destroy()


if __name__ == "__main__":
    main()
