"""Generation on a small random model with GPT-2's tokenizer: greedy equals
the argmax chain of llm_logits, seeds reproduce, eos and stop strings end the
text, the stream is computed as it is fetched, beam search, perplexity, and
bad arguments."""
import math

import numpy as np
import psycopg
import pytest

from helpers import assert_sql_error, create_model, load_tokenizer, sql_value

GEN = "SELECT llm_generate(%s, %s, %s::float8, %s, %s::float8, 'gen')"


@pytest.fixture(scope="module")
def gen_model(conn, data_dir):
    create_model(conn, "gen", n_layer=2, n_head=2, n_embd=64, n_positions=96, seed=11)
    load_tokenizer(conn, "gen", data_dir)
    return "gen"


def greedy_ids(conn, prompt_ids, n):
    ids = list(prompt_ids)
    for _ in range(n):
        raw = sql_value(conn, "SELECT llm_logits(%s, 'gen')", (ids,))
        ids.append(int(np.frombuffer(raw, np.float32).reshape(len(ids), -1)[-1].argmax()))
    return ids[len(prompt_ids):]


def test_greedy_is_argmax_chain(conn, gen_model):
    prompt = "Once upon a time"
    text = sql_value(conn, GEN, (prompt, 12, 0, 50, 1.0))
    pids = sql_value(conn, "SELECT llm_encode(%s, 'gen')", (prompt,))
    want = greedy_ids(conn, pids, 12)
    assert text == sql_value(conn, "SELECT llm_decode(%s, 'gen')", (want,))


def test_seed_reproduces(conn, gen_model):
    a = sql_value(conn, "SELECT llm_generate('Hello', 20, 1.0, 50, 0.95, 'gen', seed => 7)")
    b = sql_value(conn, "SELECT llm_generate('Hello', 20, 1.0, 50, 0.95, 'gen', seed => 7)")
    c = sql_value(conn, "SELECT llm_generate('Hello', 20, 1.0, 50, 0.95, 'gen', seed => 8)")
    assert a == b and a != c
    # top-k 1 samples the argmax
    assert sql_value(conn, "SELECT llm_generate('Hello', 10, 1.5, 1, 1.0, 'gen', seed => 3)") == \
        sql_value(conn, GEN, ("Hello", 10, 0, 50, 1.0))


def test_eos_and_stop(conn, gen_model):
    pids = sql_value(conn, "SELECT llm_encode('Hello', 'gen')")
    first = greedy_ids(conn, pids, 1)[0]
    # the first greedy token as eos: nothing is generated
    assert sql_value(conn, "SELECT llm_generate('Hello', 10, 0, 50, 1.0, 'gen', eos_token => %s)",
                     (first,)) == ""
    full = sql_value(conn, GEN, ("Hello", 16, 0, 50, 1.0))
    assert len(full) > 4
    stop = full[3:5]
    cut = sql_value(conn, "SELECT llm_generate('Hello', 16, 0, 50, 1.0, 'gen', stop => %s)", ([stop],))
    assert cut == full[:full.index(stop)]
    assert sql_value(conn, GEN, ("Hello", 0, 0, 50, 1.0)) == ""
    # eos_token -1: no end-of-text token, always max_tokens tokens
    n = sql_value(conn, "SELECT count(*) FROM llm_generate_stream('Hello', 9, 0, 50, 1.0, 'gen', "
                  "eos_token => %s)", (first,))
    assert n == 1
    n = sql_value(conn, "SELECT count(*) FROM llm_generate_stream('Hello', 9, 0, 50, 1.0, 'gen', "
                  "eos_token => -1)")
    assert n == 9
    # an empty prompt starts from <|endoftext|>
    assert isinstance(sql_value(conn, GEN, ("", 5, 0, 50, 1.0)), str)


def test_stream_rows(conn, gen_model):
    rows = conn.execute("SELECT * FROM llm_generate_stream('The king', 12, 0, 50, 1.0, 'gen')").fetchall()
    text = sql_value(conn, GEN, ("The king", 12, 0, 50, 1.0))
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    assert rows[-1][4] and not any(r[4] for r in rows[:-1])
    assert "".join(r[2] for r in rows) == rows[-1][3] == text
    ids = sql_value(conn, "SELECT llm_encode('The king', 'gen')")
    assert [r[1] for r in rows] == greedy_ids(conn, ids, len(rows))


def test_stream_is_computed_as_fetched(pg_dsn, gen_model):
    """Through a cursor, each row is computed when fetched: after the first
    FETCH only one token has been sampled; the rest come with the next ones."""
    c = psycopg.connect(pg_dsn)
    stats = "SELECT tokens_sampled FROM pg_llm_backend_stats()"
    c.execute("DECLARE s CURSOR FOR SELECT (r).* FROM "
              "(SELECT llm_generate_stream('The king', 30, 0, 50, 1.0, 'gen') AS r OFFSET 0) q")
    before = c.execute(stats).fetchone()[0]
    first = c.execute("FETCH 1 FROM s").fetchone()
    after_first = c.execute(stats).fetchone()[0]
    rest = c.execute("FETCH ALL FROM s").fetchall()
    after_all = c.execute(stats).fetchone()[0]
    assert first[0] == 1 and not first[4]
    assert after_first - before == 1
    assert len(rest) == 29 and rest[-1][4]
    assert after_all - before == 30
    c.execute("CLOSE s")
    c.rollback()
    c.close()


def test_stream_closed_early(pg_dsn, gen_model):
    c = psycopg.connect(pg_dsn)
    c.execute("DECLARE s CURSOR FOR SELECT (r).* FROM "
              "(SELECT llm_generate_stream('x', 50, 0, 50, 1.0, 'gen') AS r OFFSET 0) q")
    c.execute("FETCH 2 FROM s")
    c.execute("CLOSE s")
    assert c.execute("SELECT sum(pins) FROM pg_llm_cache_stats()").fetchone()[0] == 0
    c.commit()
    c.close()


def test_beam_search(conn, gen_model):
    rows = conn.execute("SELECT rank, score, token_ids, text FROM llm_beam_search('Hello', 3, 6, 'gen')").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]
    assert rows[0][1] >= rows[1][1] >= rows[2][1]
    assert all(conn.execute("SELECT llm_decode(%s, 'gen')", (r[2],)).fetchone()[0] == r[3] for r in rows)
    # width 1 with no length penalty is greedy
    one = conn.execute("SELECT token_ids FROM llm_beam_search('Hello', 1, 6, 'gen', 0)").fetchone()[0]
    assert one == greedy_ids(conn, sql_value(conn, "SELECT llm_encode('Hello', 'gen')"), 6)
    again = conn.execute("SELECT rank, score, token_ids FROM llm_beam_search('Hello', 3, 6, 'gen')").fetchall()
    assert again == [r[:3] for r in rows]


def test_perplexity(conn, gen_model):
    text = "The quick brown fox jumps over the lazy dog."
    ids = sql_value(conn, "SELECT llm_encode(%s, 'gen')", (text,))
    loss = sql_value(conn, "SELECT llm_loss('gen', %s, %s)", (ids[:-1], ids[1:]))
    assert sql_value(conn, "SELECT llm_perplexity(%s, 'gen')", (text,)) == \
        pytest.approx(math.exp(loss), rel=1e-5)
    # longer than the context (96 positions): sliding windows, stride 48
    long_text = " ".join(["word"] * 150)
    ids = sql_value(conn, "SELECT llm_encode(%s, 'gen')", (long_text,))
    assert len(ids) > 96
    nll, count, scored, begin = 0.0, 0, 0, 0
    while True:
        end = min(begin + 96, len(ids))
        first = max(scored + 1, begin + 1)
        k = end - first
        if k > 0:
            window = ids[begin:end]
            raw = sql_value(conn, "SELECT llm_logits(%s, 'gen')", (window,))
            logits = np.frombuffer(raw, np.float32).reshape(len(window), -1).astype(np.float64)
            for t in range(first, end):
                row = logits[t - 1 - begin]
                m = row.max()
                nll += m + math.log(np.exp(row - m).sum()) - row[ids[t]]
            count += k
            scored = end - 1
        if end == len(ids):
            break
        begin += 48
    ppl = sql_value(conn, "SELECT llm_perplexity(%s, 'gen')", (long_text,))
    assert count == len(ids) - 1
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_generate_errors(conn, gen_model):
    create_model(conn, "gen_notok", n_embd=16, n_layer=1, n_head=1, n_positions=16)
    checks = [
        (GEN, ("x", 200, 0, 50, 1.0), "54000", "max_tokens 200 leaves no room for a prompt in the model's context of 96 positions"),
        (GEN, ("x", -1, 0, 50, 1.0), "22023", "max_tokens must not be negative"),
        (GEN, ("x", 5, -0.5, 50, 1.0), "22023", "temperature must be"),
        (GEN, ("x", 5, 1.0, -1, 1.0), "22023", "topk must not be negative"),
        (GEN, ("x", 5, 1.0, 50, 0.0), "22023", "topp must lie in (0, 1]"),
        (GEN, ("x", 5, 1.0, 50, 1.5), "22023", "topp must lie in (0, 1]"),
        ("SELECT llm_generate('x', 5, repetition_penalty => 0, model => 'gen')", (), "22023",
         "repetition_penalty"),
        ("SELECT llm_generate('x', 5, model => 'gen', eos_token => 99999)", (), "22023",
         "eos_token 99999"),
        ("SELECT llm_generate('x', 5, model => 'no_model')", (), "42704", "does not exist"),
        ("SELECT llm_generate('x', 5, model => 'gen_notok')", (), "55000", "has no tokenizer"),
        ("SELECT llm_generate('x', 5, model => 'gen', stop => array[NULL]::text[])", (), "22004",
         "stop must not contain NULL"),
        ("SELECT * FROM llm_generate_stream('x', 5, -1.0, model => 'gen')", (), "22023",
         "temperature"),
        ("SELECT * FROM llm_beam_search('x', 0, 5, 'gen')", (), "22023", "beam_width"),
        ("SELECT * FROM llm_beam_search('x', 2, 500, 'gen')", (), "54000", "context"),
        ("SELECT llm_perplexity('a', 'gen')", (), "22023", "at least 2 tokens"),
    ]
    for q, params, state, fragment in checks:
        assert_sql_error(conn, q, params, state, fragment)
    assert sql_value(conn, "SELECT llm_generate(NULL, 5, model => 'gen')") is None


def test_long_prompts_truncate(conn, gen_model):
    """A prompt too long for the context: an error whose hint names
    truncate with the right numbers; with truncate, its last
    n_positions - max_tokens tokens are kept, in generate, the stream and
    beam search (and the client)."""
    prompt = " ".join(f"w{i}" for i in range(80))              # 160 tokens for a context of 96
    n = len(sql_value(conn, "SELECT llm_encode(%s, 'gen')", (prompt,)))
    assert n > 96
    with pytest.raises(psycopg.errors.ProgramLimitExceeded) as e:
        conn.execute("SELECT llm_generate(%s, 10, 0, model => 'gen')", (prompt,))
    assert e.value.diag.message_hint == "Pass truncate => true to keep the prompt's last 86 tokens, or shorten the prompt."
    assert_sql_error(conn, "SELECT llm_generate(%s, 40, 0, model => 'gen')", (" ".join(["w"] * 80),),
                     "54000", "the prompt's 80 tokens plus max_tokens 40 exceed")
    with pytest.raises(psycopg.errors.ProgramLimitExceeded) as e:
        conn.execute("SELECT llm_generate(%s, 40, 0, model => 'gen')", (" ".join(["w"] * 80),))
    assert e.value.diag.message_hint == ("Pass truncate => true to keep the prompt's last 56 tokens, ask for "
                                         "at most 16 tokens, or shorten the prompt.")
    ids = sql_value(conn, "SELECT llm_encode(%s, 'gen')", (prompt,))
    kept = sql_value(conn, "SELECT llm_decode(%s, 'gen')", (ids[-86:],))
    want = sql_value(conn, "SELECT llm_generate(%s, 10, 0, model => 'gen', eos_token => -1)", (kept,))
    got = sql_value(conn, "SELECT llm_generate(%s, 10, 0, model => 'gen', eos_token => -1, truncate => true)",
                    (prompt,))
    assert got == want and len(got) > 0
    streamed = sql_value(conn, "SELECT string_agg(token, '' ORDER BY step) FROM llm_generate_stream(%s, 10, 0, "
                               "model => 'gen', eos_token => -1, truncate => true)", (prompt,))
    assert streamed == want
    beams = conn.execute("SELECT text FROM llm_beam_search(%s, 2, 10, 'gen', 1.0, -1, truncate => true) "
                         "ORDER BY rank", (prompt,)).fetchall()
    assert len(beams) == 2
    with pytest.raises(psycopg.errors.ProgramLimitExceeded) as e:
        conn.execute("SELECT * FROM llm_beam_search(%s, 2, 10, 'gen', 1.0, -1)", (prompt,))
    assert "Pass truncate => true" in e.value.diag.message_hint
    from pg_llm_cy.client import Client
    llm = Client(conn, model="gen")
    assert llm.generate(prompt, max_tokens=10, temperature=0, eos_token=-1, truncate=True) == want
