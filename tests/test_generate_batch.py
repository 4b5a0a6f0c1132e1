"""llm_generate_batch: every completion equals llm_generate's with the same
arguments (greedy, and seeded sampling with every filter on), under
continuous batching with sequences of uneven lengths and batches bounded by
pg_llm.max_batch_size and pg_llm.max_memory_mb; rows in prompt order; errors
name the bad prompt; cancel and statement_timeout stop it within a second."""
import time

import psycopg
import pytest

from helpers import Runner, assert_sql_error, create_model, load_tokenizer, sql_value, wait_in_kernel

PROMPTS = [
    "Once upon a time",
    "The",
    "In the beginning the Universe was created. This has made a lot of people very angry",
    "ROMEO:",
    "A",
    "Fair is foul, and foul is fair: hover through the fog and filthy air.",
    "12345",
]


@pytest.fixture(scope="module")
def batch_model(conn, data_dir):
    # n_embd 60: the dot products' K % 8 tails are on every path
    create_model(conn, "batch", n_layer=2, n_head=3, n_embd=60, n_positions=64, seed=5)
    load_tokenizer(conn, "batch", data_dir)
    return "batch"


def named(kw):
    return ", ".join(f"{k} => %({k})s" for k in kw)


def batch(conn, prompts, **kw):
    kw.setdefault("model", "batch")
    rows = conn.execute(f"SELECT ord, completion FROM llm_generate_batch(%(prompts)s::text[], {named(kw)})",
                        dict(kw, prompts=prompts)).fetchall()
    assert [r[0] for r in rows] == list(range(1, len(prompts) + 1))
    return [r[1] for r in rows]


def single(conn, prompts, **kw):
    kw.setdefault("model", "batch")
    return [sql_value(conn, f"SELECT llm_generate(%(prompt)s, {named(kw)})", dict(kw, prompt=p))
            for p in prompts]


def batch_sizes(conn, prompts, **kw):
    """The batch size the server chose (its DEBUG1 message), and the completions."""
    notes = []

    def note(d):
        notes.append(d.message_primary)

    conn.add_notice_handler(note)
    conn.execute("SET client_min_messages = debug1")
    try:
        out = batch(conn, prompts, **kw)
    finally:
        conn.execute("RESET client_min_messages")
        conn.remove_notice_handler(note)
    chosen = [n for n in notes if "decoded together" in n]
    assert len(chosen) == 1, notes
    return int(chosen[0].split(",")[1].split()[0]), out


def test_greedy_equals_single(conn, batch_model):
    kw = dict(max_tokens=20, temperature=0.0)
    want = single(conn, PROMPTS, **kw)
    assert batch(conn, PROMPTS, **kw) == want
    assert len(set(want)) > 1


def test_continuous_batching_uneven_lengths(conn, batch_model):
    """Seven prompts through 3 slots, stopping at different steps: finished
    sequences leave and waiting prompts join mid-flight."""
    full = single(conn, PROMPTS, max_tokens=24, temperature=0.0)
    # a stop string from the middle of one completion ends some sequences early
    stop = full[0][len(full[0]) // 2:len(full[0]) // 2 + 2]
    kw = dict(max_tokens=24, temperature=0.0, stop=[stop])
    want = single(conn, PROMPTS, **kw)
    assert len({len(w) for w in want}) >= 3, want
    conn.execute("SET pg_llm.max_batch_size = 3")
    try:
        slots, got = batch_sizes(conn, PROMPTS, **kw)
    finally:
        conn.execute("RESET pg_llm.max_batch_size")
    assert slots == 3
    assert got == want


def test_seeded_sampling_equals_single(conn, batch_model):
    kw = dict(max_tokens=16, temperature=0.9, topk=40, topp=0.9, seed=42, repetition_penalty=1.3)
    want = single(conn, PROMPTS, **kw)
    assert batch(conn, PROMPTS, **kw) == want
    # the same prompt twice draws the same stream: equal completions
    twice = batch(conn, ["Hello there", "Hello there"], **kw)
    assert twice[0] == twice[1] == single(conn, ["Hello there"], **kw)[0]
    assert batch(conn, PROMPTS, **dict(kw, seed=43)) != want


def test_seeded_sampling_joining_mid_flight(conn, batch_model):
    """Prompts that join a running batch (3 slots, uneven stops) keep their
    own streams, step counts and repetition histories."""
    kw = dict(max_tokens=18, temperature=1.1, topk=0, topp=0.97, seed=9, repetition_penalty=1.4)
    full = single(conn, PROMPTS, **kw)
    stop = full[1][len(full[1]) // 3:len(full[1]) // 3 + 2]
    kw["stop"] = [stop]
    want = single(conn, PROMPTS + PROMPTS[:3], **kw)
    assert len({len(w) for w in want}) >= 3, want
    conn.execute("SET pg_llm.max_batch_size = 3")
    try:
        assert batch(conn, PROMPTS + PROMPTS[:3], **kw) == want
    finally:
        conn.execute("RESET pg_llm.max_batch_size")


def test_unseeded_prompts_draw_their_own(conn, batch_model):
    got = batch(conn, ["Hello there"] * 6, max_tokens=12, temperature=1.0, topk=0, topp=1.0)
    assert len(set(got)) > 1


def test_eos_truncate_and_zero_tokens(conn, batch_model):
    first = single(conn, ["Hello"], max_tokens=1, temperature=0.0)[0]
    eos = sql_value(conn, "SELECT (llm_encode(%s, 'batch'))[1]", (first,))
    kw = dict(max_tokens=10, temperature=0.0, eos_token=eos)
    assert batch(conn, ["Hello", "The king"], **kw) == single(conn, ["Hello", "The king"], **kw)
    assert batch(conn, ["Hello"], **kw) == [""]
    long = " ".join(["word"] * 80)
    kw = dict(max_tokens=8, temperature=0.0, truncate=True)
    assert batch(conn, [long, "Hi"], **kw) == single(conn, [long, "Hi"], **kw)
    assert batch(conn, PROMPTS, max_tokens=0) == [""] * len(PROMPTS)


def test_memory_bounds_the_batch(conn, batch_model):
    kw = dict(max_tokens=20, temperature=0.0)
    want = single(conn, PROMPTS, **kw)
    slots, got = batch_sizes(conn, PROMPTS, **kw)
    assert slots == len(PROMPTS) and got == want
    # a few MB: the vocabulary-sized buffers take most, 2 sequences fit
    conn.execute("SET pg_llm.max_memory_mb = 2")
    try:
        slots, got = batch_sizes(conn, PROMPTS, **kw)
    finally:
        conn.execute("RESET pg_llm.max_memory_mb")
    assert 1 <= slots < len(PROMPTS)
    assert got == want


def test_empty_and_null_arrays(conn, batch_model):
    assert conn.execute("SELECT * FROM llm_generate_batch('{}'::text[], model => 'batch')").fetchall() == []
    assert conn.execute("SELECT * FROM llm_generate_batch(NULL, model => 'batch')").fetchall() == []


def test_errors_name_the_prompt(conn, batch_model):
    q = "SELECT * FROM llm_generate_batch(%s::text[], 8, model => 'batch')"
    assert_sql_error(conn, q, (["a", None, "b"],), "22004", "prompt 2 is NULL")
    assert_sql_error(conn, q, (["a", "b", ""],), "22023", "prompt 3 is empty")
    long = " ".join(["word"] * 80)
    assert_sql_error(conn, q, (["a", "b", "c", long],), "54000",
                     "prompt 4: the prompt's 80 tokens plus max_tokens 8 exceed")
    assert_sql_error(conn, "SELECT * FROM llm_generate_batch(ARRAY[['a'], ['b']], model => 'batch')",
                     (), "2202E", "one-dimensional")
    assert_sql_error(conn, "SELECT * FROM llm_generate_batch(array_fill('x'::text, ARRAY[1000001]), "
                     "model => 'batch')", (), "54000", "1000001 prompts, more than the 1000000")
    assert_sql_error(conn, "SELECT * FROM llm_generate_batch(ARRAY['a'], temperature => -1, "
                     "model => 'batch')", (), "22023", "temperature")
    assert_sql_error(conn, "SELECT * FROM llm_generate_batch(ARRAY['a'], model => 'no_such_model')",
                     (), "42704", "no_such_model")


def test_table_pattern(conn, batch_model):
    """The documented pattern: prompts in id order, joined back by ordinality."""
    conn.execute("CREATE TEMP TABLE bp (id int PRIMARY KEY, prompt text)")
    conn.execute("INSERT INTO bp SELECT i, 'Prompt number ' || i FROM generate_series(1, 5) i")
    rows = conn.execute(
        "WITH p AS (SELECT ARRAY(SELECT prompt FROM bp ORDER BY id) AS prompts, "
        "                  ARRAY(SELECT id FROM bp ORDER BY id) AS ids) "
        "SELECT p.ids[g.ord], g.completion "
        "FROM p, llm_generate_batch(p.prompts, 6, 0, model => 'batch') g ORDER BY 1").fetchall()
    want = single(conn, [f"Prompt number {i}" for i in range(1, 6)], max_tokens=6, temperature=0.0)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5] and [r[1] for r in rows] == want


@pytest.fixture(scope="module")
def slow_model(conn, data_dir):
    # big enough that a batch runs for many seconds
    create_model(conn, "batch_slow", n_layer=4, n_head=4, n_embd=256, n_positions=512, seed=2)
    load_tokenizer(conn, "batch_slow", data_dir)
    return "batch_slow"


LONG_BATCH = ("SELECT count(*) FROM llm_generate_batch(array_fill('Tell me a story'::text, ARRAY[2000]), "
              "400, 0, model => 'batch_slow', eos_token => -1)")


def test_cancel_stops_within_a_second(conn, pg_dsn, slow_model):
    r = Runner(pg_dsn, LONG_BATCH, ["set pg_llm.num_threads = 2"])
    r.start()
    wait_in_kernel(conn, r.pid, settle=2.0)
    t0 = time.perf_counter()
    assert conn.execute("select pg_cancel_backend(%s)", (r.pid,)).fetchone()[0]
    r.join(30)
    assert isinstance(r.error, psycopg.errors.QueryCanceled), r.error or r.result
    assert r.ended - t0 < 1.0, f"cancel took {r.ended - t0:.3f} s"
    r.conn.close()


def test_statement_timeout_stops_within_a_second(pg_dsn, slow_model):
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("set statement_timeout = '1500ms'")
        t0 = time.perf_counter()
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            c.execute(LONG_BATCH)
        assert time.perf_counter() - t0 < 1.5 + 1.0
        c.execute("reset statement_timeout")
        assert c.execute("SELECT count(*) FROM llm_generate_batch(ARRAY['a', 'b'], 2, model => 'batch_slow')"
                         ).fetchone()[0] == 2


def test_buffers_are_given_back(conn, batch_model):
    """A call's KV caches, logits and prompts are released when it returns:
    the next call sees the whole of pg_llm.max_memory_mb again."""
    before = sql_value(conn, "SELECT working_mb FROM pg_llm_backend_stats()")
    prompts = [f"Prompt {i} of a longer list" for i in range(300)]
    n = sql_value(conn, "SELECT count(*) FROM llm_generate_batch(%s::text[], 3, 0, model => 'batch', "
                  "stop => ARRAY['zz'])", (prompts,))
    assert n == 300
    assert sql_value(conn, "SELECT working_mb FROM pg_llm_backend_stats()") == before
    # two batches in one query: the second is not squeezed by the first's buffers
    conn.execute("SET pg_llm.max_memory_mb = 2")
    try:
        rows = conn.execute("SELECT a.completion = b.completion FROM "
                            "llm_generate_batch(ARRAY['Hello', 'The king'], 5, 0, model => 'batch') a JOIN "
                            "llm_generate_batch(ARRAY['Hello', 'The king'], 5, 0, model => 'batch') b "
                            "USING (ord)").fetchall()
    finally:
        conn.execute("RESET pg_llm.max_memory_mb")
    assert rows == [(True,), (True,)]
