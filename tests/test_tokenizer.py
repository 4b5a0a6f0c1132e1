"""GPT-2's tokenizer: loading, ids equal to tiktoken's GPT-2 encoding (built
from the same vocab.json and merges.txt) on all of tinyshakespeare and on
generated Unicode-heavy text, decode(encode(x)) == x, and bad input."""
import random

import numpy as np
import psycopg
import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, given, settings, strategies as st
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from helpers import assert_sql_error, create_model, load_tokenizer, sql_value
from pg_llm_cy import kernels as K
from pg_llm_cy.tokenizer_files import ingest

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


@pytest.fixture(scope="module")
def tiktoken_gpt2(data_dir):
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=f"{data_dir}/gpt2/merges.txt",
                                            encoder_json_file=f"{data_dir}/gpt2/vocab.json")
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@pytest.fixture(scope="module")
def tok_model(conn, data_dir):
    create_model(conn, "tok", n_embd=8, n_layer=1, n_head=1, n_positions=8)
    load_tokenizer(conn, "tok", data_dir)
    return "tok"


@pytest.fixture(scope="module")
def py_tokenizer(data_dir):
    return K.Tokenizer.from_files(f"{data_dir}/gpt2/vocab.json", f"{data_dir}/gpt2/merges.txt")


# pieces of text exercising every branch of GPT-2's pre-tokenizer
SEGMENTS = [
    "Hello", "world", "naïve", "café", "Ångström", "e\u0301", "a\u0308\u0304", "日本語", "中文字符",
    "한국어", "مرحبا بالعالم", "שלום", "Привет", "Ελληνικά", "हिन्दी", "😀", "👍🏽", "🇫🇷", "👨‍👩‍👧",
    "12345", "٣٤٥", "Ⅻ", "½", "3.14", "1,000", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d",
    "don't", "I'M", "''", "'", "<|endoftext|>", " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n",
    "\r\n", " \n ", "\u00a0", "\u3000", "\u2028", "!!", "?!...", "--", "$%^&*", "(x)", "[y]",
    "{z}", "@#", "_", "~~", "\\", "/", "\"quoted\"", "\x00", "\x1f", "\u200b", "\ufeff",
]


def unicode_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(SEGMENTS) + rng.choice(["", " ", "", "\n", "  "]) for _ in range(n))


def test_load_counts(conn, tok_model):
    assert sql_value(conn, "SELECT count(*) FROM llm_vocab WHERE model = 'tok'") == 50257
    assert sql_value(conn, "SELECT count(*) FROM llm_merges WHERE model = 'tok'") == 50000
    assert sql_value(conn, "SELECT special FROM llm_vocab WHERE model = 'tok' AND token_id = 50256")
    assert sql_value(conn, "SELECT has_tokenizer FROM llm_models WHERE model = 'tok'")


def test_shakespeare_matches_tiktoken(conn, tok_model, data_dir, tiktoken_gpt2, py_tokenizer):
    with open(f"{data_dir}/tinyshakespeare.txt", encoding="utf-8") as f:
        text = f.read()
    want = tiktoken_gpt2.encode_ordinary(text)
    got = sql_value(conn, "SELECT llm_encode(%s, 'tok')", (text,))
    assert got == want
    assert py_tokenizer.encode(text).tolist() == want
    assert sql_value(conn, "SELECT llm_decode(llm_encode(%s, 'tok'), 'tok') = %s", (text, text))


def test_generated_unicode_matches_tiktoken(conn, tok_model, tiktoken_gpt2, py_tokenizer):
    rng = random.Random(20261122)
    for _ in range(60):
        text = unicode_text(rng, rng.randint(1, 60))
        want = tiktoken_gpt2.encode_ordinary(text)
        assert sql_value(conn, "SELECT llm_encode(%s, 'tok')", (text.replace("\x00", ""),)) == \
            tiktoken_gpt2.encode_ordinary(text.replace("\x00", "")), repr(text)
        assert py_tokenizer.encode(text).tolist() == want, repr(text)
        assert py_tokenizer.decode(want) == text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=80))
def test_arbitrary_text_matches_tiktoken(py_tokenizer, tiktoken_gpt2, text):
    ids = tiktoken_gpt2.encode_ordinary(text)
    assert py_tokenizer.encode(text).tolist() == ids
    assert py_tokenizer.decode(ids) == text


# pieces longer than 256 bytes take the heap-based merge: the same ids
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["ab", "abc", "the", "aeiou", "xyzq", "\u00e9\u00fc", "a\u4e2d", "0123456789"]),
       st.integers(200, 3000), st.randoms(use_true_random=False))
def test_long_pieces_match_tiktoken(py_tokenizer, tiktoken_gpt2, alphabet, n, rnd):
    text = "".join(rnd.choice(alphabet) for _ in range(n))
    assert py_tokenizer.encode(text).tolist() == tiktoken_gpt2.encode_ordinary(text)


def test_very_long_piece_in_sql(conn, tok_model, tiktoken_gpt2):
    """One pre-token of 2 MB (a run of letters): n log n, not n^2 (which took
    3 s for 100 kB and could not be cancelled)."""
    ids = sql_value(conn, "SELECT llm_encode(repeat('xy', 1000000), 'tok')")
    assert ids == tiktoken_gpt2.encode_ordinary("xy" * 1000000)


def test_endoftext_is_plain_text(conn, tok_model, tiktoken_gpt2):
    ids = sql_value(conn, "SELECT llm_encode('a<|endoftext|>b', 'tok')")
    assert ids == tiktoken_gpt2.encode_ordinary("a<|endoftext|>b") and 50256 not in ids
    assert sql_value(conn, "SELECT llm_decode(array[50256], 'tok')") == "<|endoftext|>"


def test_decode_partial_characters(conn, tok_model, py_tokenizer):
    # an emoji's bytes span two byte-level tokens: one alone is not UTF-8
    ids = py_tokenizer.encode("😀").tolist()
    assert len(ids) >= 2
    assert sql_value(conn, "SELECT llm_decode(%s, 'tok')", (ids[:1],)) == "\ufffd"
    assert sql_value(conn, "SELECT llm_decode(%s, 'tok')", (ids,)) == "😀"
    assert sql_value(conn, "SELECT llm_decode('{}'::int[], 'tok')") == ""
    assert sql_value(conn, "SELECT llm_encode('', 'tok')") == []


def test_vocab_and_merges_in_one_statement(conn, data_dir):
    """The merges loader sees the vocabulary loaded by the same SELECT."""
    create_model(conn, "onestmt", n_layer=1, n_head=2, n_embd=16, n_positions=32)
    vocab = open(f"{data_dir}/gpt2/vocab.json", encoding="utf-8").read()
    merges = open(f"{data_dir}/gpt2/merges.txt", encoding="utf-8").read()
    try:
        row = conn.execute("SELECT pg_llm_load_bpe_vocab_text(%s, 'onestmt'), "
                           "pg_llm_load_bpe_merges_text(%s, 'onestmt')", (vocab, merges)).fetchone()
        assert row == (50257, 50000)
        assert sql_value(conn, "SELECT llm_encode('Hello world', 'onestmt')") == [15496, 995]
    finally:
        conn.execute("SELECT llm_drop_model('onestmt')")


def test_decode_nul_byte(conn, tok_model, py_tokenizer):
    """GPT-2 has a token for byte 0 ('\u0100' in vocab.json), which a model
    may sample; PostgreSQL's text cannot hold NUL, so it decodes to U+FFFD
    (the 10-minute load test met it: "invalid byte sequence ... 0x00")."""
    nul = py_tokenizer.encode("\x00").tolist()
    assert len(nul) == 1 and py_tokenizer.decode_bytes(nul) == b"\x00"
    hello, world = py_tokenizer.encode("Hello").tolist(), py_tokenizer.encode(" world").tolist()
    assert sql_value(conn, "SELECT llm_decode(%s, 'tok')", (hello + nul + world,)) \
        == "Hello\ufffd world"
    assert py_tokenizer.decode(hello + nul) == "Hello\x00"      # Python's str holds NUL
    assert K.sanitize_utf8(b"a\x00b\xff", replace_nul=True) == "a\ufffdb\ufffd".encode()


def test_generating_the_nul_token(conn, data_dir, py_tokenizer):
    """A model that always picks byte 0's token: generate, stream and beam
    search return U+FFFD for it instead of failing."""
    nul = py_tokenizer.encode("\x00").tolist()[0]
    create_model(conn, "nulgen", n_layer=1, n_head=2, n_embd=16, n_positions=32)
    load_tokenizer(conn, "nulgen", data_dir)
    # ln_f's output becomes its bias (all ones), so the logits are wte's row sums
    conn.execute("UPDATE llm_param SET data = pg_llm_zeros_like(data) WHERE model = 'nulgen' "
                 "AND name = 'ln_f.weight'")
    conn.execute("UPDATE llm_param SET data = pg_llm_ones_like(data) WHERE model = 'nulgen' "
                 "AND name = 'ln_f.bias'")
    wte = sql_value(conn, "SELECT data FROM llm_param WHERE model = 'nulgen' AND name = 'wte.weight'")
    w = np.frombuffer(wte, np.float32).reshape(-1, 16).copy()
    w[nul] = 1.0
    conn.execute("UPDATE llm_param SET data = %s WHERE model = 'nulgen' AND name = 'wte.weight'",
                 (w.tobytes(),))
    conn.execute("UPDATE llm_model_config SET version = nextval('llm_model_version_seq') "
                 "WHERE model = 'nulgen'")
    try:
        assert sql_value(conn, "SELECT llm_generate('Hi', 4, temperature => 0, "
                               "model => 'nulgen', eos_token => -1)") == "\ufffd" * 4
        rows = conn.execute("SELECT token, text FROM llm_generate_stream('Hi', 3, temperature => 0, "
                            "model => 'nulgen', eos_token => -1)").fetchall()
        assert [r[0] for r in rows] == ["\ufffd"] * 3 and rows[-1][1] == "\ufffd" * 3
        beams = conn.execute("SELECT text FROM llm_beam_search('Hi', 2, 3, 'nulgen', 1.0, -1)").fetchall()
        assert "\ufffd\ufffd\ufffd" in [b[0] for b in beams]
    finally:
        conn.execute("SELECT llm_drop_model('nulgen')")


@pytest.mark.parametrize("text", ["Hello world's  end\n\n x", "   ", "a  \tb", "x \n", "'s'S'", "A1b2 3"])
def test_pre_tokenizer_pieces(text):
    """The state machine splits like the regular expression itself."""
    assert K.pre_tokenize(text) == [m.encode() for m in regex.findall(GPT2_PATTERN, text)]


def test_client_side_ingestion(conn, data_dir):
    create_model(conn, "tok_client", n_embd=8, n_layer=1, n_head=1, n_positions=8)
    n_tok, n_merge = ingest(conn, "tok_client", f"{data_dir}/gpt2/vocab.json",
                            f"{data_dir}/gpt2/merges.txt")
    assert (n_tok, n_merge) == (50257, 50000)
    assert sql_value(conn, "SELECT llm_encode('Hello world', 'tok_client')") == [15496, 995]


def test_errors(conn, tok_model, data_dir, server_dir):
    create_model(conn, "notok", n_embd=8, n_layer=1, n_head=1, n_positions=8)
    assert_sql_error(conn, "SELECT llm_encode('x', 'notok')", (), "55000", "has no tokenizer")
    assert_sql_error(conn, "SELECT llm_decode(array[1], 'notok')", (), "55000", "has no tokenizer")
    assert_sql_error(conn, "SELECT llm_encode('x', 'no_such_model')", (), "42704", "does not exist")
    assert_sql_error(conn, "SELECT pg_llm_load_bpe_merges(%s, 'notok')",
                     (f"{data_dir}/gpt2/merges.txt",), "55000", "has no vocabulary")
    assert_sql_error(conn, "SELECT pg_llm_load_bpe_vocab('/no/such/file.json', 'notok')", (),
                     "58P01", "could not open file")
    assert_sql_error(conn, "SELECT pg_llm_load_bpe_vocab(%s, 'notok')", (server_dir,), "42809",
                     "not a regular file")
    assert_sql_error(conn, "SELECT pg_llm_load_bpe_vocab_text('{\"a\": 0, \"b\": ', 'notok')", (),
                     "22P02", "malformed JSON")
    assert_sql_error(conn, "SELECT pg_llm_load_bpe_vocab_text('{\"a\": 0, \"b\": 5}', 'notok')", (),
                     "22000", "must be 0, 1, ..., n-1")
    assert_sql_error(conn, "SELECT pg_llm_load_bpe_vocab_text('[1, 2]', 'notok')", (), "22P02", "malformed")
    assert_sql_error(conn, "SELECT pg_llm_load_bpe_merges_text(%s, 'tok')",
                     ("#version: 0.2\nĠ t\nzzzqqq xyzzy\n",), "22000", "line 3")
    assert_sql_error(conn, "SELECT pg_llm_load_bpe_merges_text(%s, 'tok')",
                     ("#version: 0.2\nĠt\n",), "22P02", "line 2")
    assert_sql_error(conn, "SELECT llm_decode(array[50257], 'tok')", (), "22003", "outside the vocabulary")
    assert_sql_error(conn, "SELECT pg_llm_load_bpe_vocab_text('{}', 'no_such_model')", (), "42704",
                     "does not exist")
    # the failed loads left the working tokenizer as it was
    assert sql_value(conn, "SELECT llm_encode('Hello world', 'tok')") == [15496, 995]


def test_pg_gpt2_views(conn, data_dir):
    """pg_gpt2's llm_bpe_vocab and llm_bpe_merges: vocab.json's keys and
    merges.txt's lines, read-only."""
    import json
    create_model(conn, "views_m", n_layer=1, n_head=1, n_embd=8, n_positions=8)
    try:
        # statistics from before the load: the planner thinks the model has
        # one row, which once made the merges view filter 50,000 x 50,000 pairs
        conn.execute("ANALYZE llm_vocab, llm_merges")
        load_tokenizer(conn, "views_m", data_dir)
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT * FROM llm_bpe_merges WHERE model = 'views_m'").fetchall())
        # each token by its key (PG 14 prints the keys as $n, later versions as g.*)
        assert "Join Filter" not in plan and plan.count("AND (token_id = ") == 2, plan
        vocab = json.load(open(f"{data_dir}/gpt2/vocab.json", encoding="utf-8"))
        rows = conn.execute("SELECT token, token_id, score, bytes FROM llm_bpe_vocab WHERE model = 'views_m'").fetchall()
        assert {t: i for t, i, _, _ in rows} == vocab
        assert all(s is None for _, _, s, _ in rows)
        assert dict((i, b) for _, i, _, b in rows)[15496] == b"Hello"
        merges = open(f"{data_dir}/gpt2/merges.txt", encoding="utf-8").read().split("\n")[1:]
        merges = [m for m in merges if m]
        got = conn.execute("SELECT rank, \"left\", \"right\", pair FROM llm_bpe_merges WHERE model = 'views_m' "
                           "ORDER BY rank").fetchall()
        assert [p for _, _, _, p in got] == merges
        assert all(p == f"{l} {r}" for _, l, r, p in got)
        for sql in ("DELETE FROM llm_bpe_vocab WHERE model = 'views_m'",
                    "UPDATE llm_bpe_merges SET pair = 'x' WHERE model = 'views_m'",
                    "INSERT INTO llm_bpe_vocab (model, token_id) VALUES ('views_m', 1)"):
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="is a read-only view"):
                conn.execute(sql)
    finally:
        conn.execute("SELECT llm_drop_model('views_m')")
