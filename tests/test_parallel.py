"""Parallel query: the read-only functions (llm_generate, llm_logits,
llm_loss, llm_perplexity, llm_encode, llm_decode) are PARALLEL SAFE, so a
parallel plan runs them in its workers, which map the same weight file; the
rows equal a serial plan's."""
import re

import psycopg

from helpers import create_model, load_tokenizer

QUERY = ("SELECT id, llm_generate(prompt, 4, 0, model => 'par', eos_token => -1), "
         "llm_encode(prompt, 'par'), llm_decode(llm_encode(prompt, 'par'), 'par'), "
         "llm_perplexity(prompt, 'par'), length(llm_logits(llm_encode(prompt, 'par'), 'par')), "
         "llm_loss('par', ARRAY[1, 2, id], ARRAY[2, id, 3]) FROM par_prompts")
PARALLEL = ("SET max_parallel_workers_per_gather = 2", "SET parallel_setup_cost = 0",
            "SET parallel_tuple_cost = 0", "SET min_parallel_table_scan_size = 0")


def test_a_parallel_plan_runs_the_read_path_in_its_workers(conn, pg_dsn, data_dir):
    create_model(conn, "par", seed=7, n_layer=1, n_head=2, n_embd=32, n_positions=64)
    load_tokenizer(conn, "par", data_dir)
    conn.execute("DROP TABLE IF EXISTS par_prompts")
    conn.execute("CREATE TABLE par_prompts AS SELECT i AS id, 'Prompt number ' || i AS prompt "
                 "FROM generate_series(1, 40) i")
    conn.execute("ANALYZE par_prompts")
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            for s in PARALLEL:
                c.execute(s)
            plan = "\n".join(r[0] for r in c.execute("EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) " + QUERY))
            assert "Gather" in plan and re.search(r"Workers Launched: [1-9]", plan), plan
            # the calls are the parallel scan's output: the workers make them
            scan = plan.split("Parallel Seq Scan")[1]
            assert "llm_generate(" in scan and "llm_logits(" in scan, plan
            parallel = sorted(c.execute(QUERY).fetchall())
            c.execute("SET max_parallel_workers_per_gather = 0")
            serial = sorted(c.execute(QUERY).fetchall())
        assert len(serial) == 40 and parallel == serial
    finally:
        conn.execute("DROP TABLE par_prompts")
        conn.execute("SELECT llm_drop_model('par')")
