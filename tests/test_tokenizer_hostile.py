"""Tokenizers built from any vocabulary -- a file, text a client sends, or
rows an admin writes straight into llm_vocab and llm_merges -- are bounded:
every table is sized from a count, the build is linear in the vocabulary's
bytes (no pair table to fill, no probe loop without end), it answers
cancel and statement_timeout, and bad rows are clear errors.  Random
vocabularies still encode exactly as tiktoken does with the same ranks.
(The fuzzing of the construction: scripts/fuzz_parsers.py --parsers bpe.)
"""
import os
import random
import subprocess
import sys
import time

import numpy as np
import psycopg
import pytest

from helpers import Runner, assert_sql_error, create_model, sql_value
from pg_llm_cy import _kernels as K

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def arrays(tokens, special=None):
    data = b"".join(tokens)
    offsets = np.zeros(len(tokens) + 1, np.int64)
    offsets[1:] = np.cumsum([len(t) for t in tokens])
    sp = np.zeros(len(tokens), np.uint8) if special is None else np.array(special, np.uint8)
    return np.frombuffer(data, np.uint8).copy() if data else np.zeros(1, np.uint8), offsets, sp


def chain(n, letter=b"a"):
    """The 256 byte tokens, then letter * 2 .. letter * n: every prefix and
    suffix of each is a token (a pair explosion: n^2 / 2 splits)."""
    return [bytes([b]) for b in range(256)] + [letter * k for k in range(2, n + 1)]


def test_the_pair_explosion_of_the_report():
    """256 bytes + "a"*2 .. "a"*300 filled the old pair table, and then its
    insertion probed forever; now the table is sized from the count."""
    tiktoken = pytest.importorskip("tiktoken")
    toks = chain(300)
    tok = K.Tokenizer(*arrays(toks))
    assert list(tok.encode("aa")) == [256]
    assert list(tok.encode("a" * 300)) == [256 + 298]
    ref = tiktoken.Encoding("chain", pat_str=GPT2_PATTERN,
                            mergeable_ranks={t: i for i, t in enumerate(toks)}, special_tokens={})
    for n in (301, 777, 1000):
        assert list(tok.encode("a" * n)) == ref.encode_ordinary("a" * n)


def test_build_is_linear_in_the_vocabulary():
    """"a"*2 .. "a"*3000 (4.5 MB of tokens, 4.5 million splits): finishes in
    a subprocess that a hang would not leave (the old construction hashed
    every prefix and suffix: hours)."""
    code = ("import numpy as np\nfrom pg_llm_cy import _kernels as K\n"
            "toks = [bytes([b]) for b in range(256)] + [b'a' * k for k in range(2, 3001)]\n"
            "data = np.frombuffer(b''.join(toks), np.uint8).copy()\n"
            "off = np.zeros(len(toks) + 1, np.int64); off[1:] = np.cumsum([len(t) for t in toks])\n"
            "t = K.Tokenizer(data, off, np.zeros(len(toks), np.uint8))\n"
            "assert list(t.encode('a' * 2999)) == [256 + 2997]\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(K.__file__)))   # the installed package
    assert r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("seed", range(40))
def test_random_vocabularies_encode_as_tiktoken(seed):
    tiktoken = pytest.importorskip("tiktoken")
    rng = random.Random(seed)
    alphabet = rng.choice([b"ab", b"abc ", b"xyz!1 ", bytes(range(97, 105)) + b" "])
    tokens = {bytes([b]) for b in range(256)}
    while len(tokens) < 256 + rng.randrange(5, 300):
        tokens.add(bytes(rng.choice(alphabet) for _ in range(rng.randrange(2, 9))))
    order = list(tokens)
    rng.shuffle(order)      # byte tokens anywhere: ranks are ids
    tok = K.Tokenizer(*arrays(order))
    ref = tiktoken.Encoding(f"rand{seed}", pat_str=GPT2_PATTERN,
                            mergeable_ranks={t: i for i, t in enumerate(order)}, special_tokens={})
    for _ in range(30):
        text = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 80))).decode()
        assert list(tok.encode(text)) == ref.encode_ordinary(text), (seed, text)


def test_duplicates_empty_and_special_tokens():
    toks = chain(4) + [b"aa", b"", b"<|x|>", b"aa"]       # "aa" three times, an empty token
    special = [0] * (len(toks) - 2) + [1, 0]
    tok = K.Tokenizer(*arrays(toks, special))
    assert list(tok.encode("aaaa")) == [258]                # the lowest id of its bytes
    assert list(tok.encode("<|x|>")) != [len(toks) - 2]     # special: never from text
    with pytest.raises(ValueError, match="single-byte"):
        K.Tokenizer(*arrays([b"a", b"b", b"ab"]))
    data, off, sp = arrays(chain(3))
    off[5] = off[4] - 1                                     # decreasing offsets
    with pytest.raises(ValueError, match="inconsistent"):
        K.Tokenizer(data, off, sp)


# ---------------------------------------------------------------------------
# images: the built tables every backend maps from the server's cache file
# ---------------------------------------------------------------------------
IMAGE_HEADER = 1072         # magic, n_tokens, data_bytes, tok_mask, pair_mask, byte_id[256]


def align64(n):
    return (n + 63) // 64 * 64


def image_sections(img):
    """Start of each section (offsets, tok_slots, pair_keys, pair_vals,
    special, data) as bpe.pxi's _image_layout places them."""
    n, data_bytes, tok_mask, pair_mask = np.frombuffer(img, np.int64, 4, 16)
    at = [align64(IMAGE_HEADER)]
    for size in ((n + 1) * 8, (tok_mask + 1) * 4, (pair_mask + 1) * 8, (pair_mask + 1) * 4, n):
        at.append(align64(at[-1] + int(size)))
    return dict(zip(("offsets", "tok_slots", "pair_keys", "pair_vals", "special", "data"), at)), int(n)


@pytest.mark.parametrize("seed", range(10))
def test_an_image_encodes_as_the_tokenizer_it_was_made_from(seed):
    rng = random.Random(seed)
    alphabet = b"abc \xc3\xa9!1"
    tokens = [bytes([b]) for b in range(256)]
    while len(tokens) < 256 + rng.randrange(5, 400):
        t = bytes(rng.choice(alphabet) for _ in range(rng.randrange(2, 9)))
        if t not in tokens:
            tokens.append(t)
    tok = K.Tokenizer(*arrays(tokens, [0] * (len(tokens) - 1) + [1]))
    img = tok.image()
    assert K.Tokenizer(*arrays(tokens, [0] * (len(tokens) - 1) + [1])).image() == img   # deterministic
    mapped = K.Tokenizer(image=img)
    assert mapped.n_tokens == tok.n_tokens and mapped.image() == img
    for _ in range(50):
        text = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 120))).decode("utf-8", "replace")
        ids = tok.encode(text)
        assert list(mapped.encode(text)) == list(ids)
        assert mapped.decode_bytes(ids) == tok.decode_bytes(ids)


def test_the_gpt2_image_encodes_as_the_gpt2_tokenizer(data_dir):
    tok = K.Tokenizer.from_files(f"{data_dir}/gpt2/vocab.json")
    mapped = K.Tokenizer(image=tok.image())
    with open(f"{data_dir}/tinyshakespeare.txt", encoding="utf-8") as f:
        text = f.read()
    assert np.array_equal(mapped.encode(text), tok.encode(text))


def damaged_images(img):
    """(what, bytes) for damage the image check must refuse."""
    at, n = image_sections(img)

    def put(offset, dtype, value):
        b = bytearray(img)
        b[offset:offset + np.dtype(dtype).itemsize] = np.array([value], dtype).tobytes()
        return bytes(b)
    tok_slots = np.frombuffer(img, np.int32, count=(at["pair_keys"] - at["tok_slots"]) // 4,
                              offset=at["tok_slots"])
    used_slot = at["tok_slots"] + 4 * int(np.flatnonzero(tok_slots >= 0)[0])
    keys = np.frombuffer(img, np.uint64, count=(at["pair_vals"] - at["pair_keys"]) // 8,
                         offset=at["pair_keys"])
    used_pair = int(np.flatnonzero(keys != np.uint64(2**64 - 1))[0])
    full = bytearray(img)
    full[at["tok_slots"]:at["pair_keys"]] = bytes(at["pair_keys"] - at["tok_slots"])   # every slot id 0
    return [
        ("magic", put(0, np.uint8, ord("x"))),
        ("truncated", img[:-64]),
        ("longer", img + bytes(64)),
        ("empty", b""),
        ("n_tokens 0", put(16, np.int64, 0)),
        ("n_tokens beyond the image", put(16, np.int64, n + 1000)),
        ("tok_mask not a power of two less one", put(32, np.int64, 6)),
        ("pair_mask huge", put(40, np.int64, 2**40 - 1)),
        ("byte id out of range", put(48, np.int32, n)),
        ("offsets decrease", put(at["offsets"] + 8, np.int64, -5)),
        ("last offset beyond the data", put(at["offsets"] + 8 * n, np.int64, 10**6)),
        ("token id out of range", put(used_slot, np.int32, n)),
        ("no empty token slot: a probe would not end", bytes(full)),
        ("merged id out of range", put(at["pair_vals"] + 4 * used_pair, np.int32, -7)),
        ("pair of an id out of range", put(at["pair_keys"] + 8 * used_pair, np.uint64, (n + 3) << 32)),
    ]


def test_damaged_images_are_refused():
    tok = K.Tokenizer(*arrays(chain(40) + [b"ab", b"ba", b"aab"]))
    for what, img in damaged_images(tok.image()):
        with pytest.raises(ValueError, match="not a tokenizer image"):
            K.Tokenizer(image=img)
            pytest.fail(what)


def test_any_accepted_image_is_safe_to_use():
    """Random damage: either refused, or a tokenizer that encodes and
    decodes inside its image (run where a crash cannot take pytest down)."""
    code = ("import random\nfrom pg_llm_cy import _kernels as K\n"
            "import numpy as np\n"
            "toks = [bytes([b]) for b in range(256)] + [b'a' * k for k in range(2, 40)] + [b'ab', b' b', b'ba']\n"
            "data = np.frombuffer(b''.join(toks), np.uint8).copy()\n"
            "off = np.zeros(len(toks) + 1, np.int64); off[1:] = np.cumsum([len(t) for t in toks])\n"
            "img = K.Tokenizer(data, off, np.zeros(len(toks), np.uint8)).image()\n"
            "rng = random.Random(5); accepted = 0\n"
            "for _ in range(3000):\n"
            "    b = bytearray(img)\n"
            "    for _ in range(rng.randrange(1, 4)):\n"
            "        b[rng.randrange(len(b))] = rng.randrange(256)\n"
            "    try:\n"
            "        t = K.Tokenizer(image=bytes(b))\n"
            "    except ValueError:\n"
            "        continue\n"
            "    accepted += 1\n"
            "    ids = t.encode('aaaa ab ba aab  b' * 3)\n"
            "    t.decode_bytes(ids); t.decode_bytes(list(range(len(toks))))\n"
            "print('ok', accepted)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(K.__file__)))
    assert r.returncode == 0 and r.stdout.startswith("ok"), (r.returncode, r.stderr[-2000:])
    assert int(r.stdout.split()[1]) > 100       # damage to token bytes and padding is harmless


# ---------------------------------------------------------------------------
# rows written straight into the tables
# ---------------------------------------------------------------------------
def write_vocab(c, model, tokens, merges=((97, 97, 256),), bump=True):
    c.execute("DELETE FROM llm_merges WHERE model = %s", (model,))
    c.execute("DELETE FROM llm_vocab WHERE model = %s", (model,))
    with c.cursor().copy("COPY llm_vocab (model, token_id, token) FROM STDIN") as cp:
        for i, t in tokens:
            cp.write_row((model, i, t))
    for rank, (a, b, m) in enumerate(merges):
        c.execute("INSERT INTO llm_merges VALUES (%s, %s, %s, %s, %s)", (model, rank, a, b, m))
    if bump:
        c.execute("UPDATE llm_model_config SET tokenizer_version = nextval('llm_model_version_seq') "
                  "WHERE model = %s", (model,))


@pytest.fixture(scope="module")
def model(conn):
    create_model(conn, "hostile", n_layer=1, n_head=1, n_embd=8, n_positions=16, vocab=64)
    yield "hostile"
    conn.execute("SELECT llm_drop_model('hostile')")


def test_rows_of_the_report_encode_in_time(conn, model):
    write_vocab(conn, model, list(enumerate(chain(300))))
    conn.execute("SET statement_timeout = '5s'")
    try:
        assert sql_value(conn, "SELECT llm_encode('aa', %s)", (model,)) == [256]
        want = list(K.Tokenizer(*arrays(chain(300))).encode("a" * 1000))
        assert sql_value(conn, "SELECT llm_encode(repeat('a', 1000), %s)", (model,)) == want
    finally:
        conn.execute("RESET statement_timeout")


def test_hostile_rows_are_clear_errors(conn, model):
    # ids with a gap
    write_vocab(conn, model, [(i if i < 100 else i + 5, t) for i, t in enumerate(chain(20))])
    assert_sql_error(conn, "SELECT llm_encode('aa', %s)", (model,), "22000",
                     'the vocabulary of model "hostile" is not numbered 0 .. 274: it has no token 100')
    # not byte-level
    write_vocab(conn, model, [(0, b"a"), (1, b"b"), (2, b"ab")])
    assert_sql_error(conn, "SELECT llm_encode('ab', %s)", (model,), "22000", "lacks single-byte tokens")
    # merges whose ids lie outside the vocabulary: rows the encoder never follows
    write_vocab(conn, model, list(enumerate(chain(5))), merges=[(-7, 10 ** 9, 2 ** 31 - 1), (1, 1, 1)])
    assert sql_value(conn, "SELECT llm_encode('aaa', %s)", (model,)) == [257]
    # duplicate bytes, empty and huge tokens
    toks = chain(5) + [b"", b"aa", b"z" * 5_000_000]
    write_vocab(conn, model, list(enumerate(toks)))
    want = list(K.Tokenizer(*arrays(toks)).encode("aa zz"))
    assert want == [256, 32, 122, 122]
    assert sql_value(conn, "SELECT llm_encode('aa zz', %s)", (model,)) == want
    assert sql_value(conn, "SELECT cardinality(llm_encode(repeat('z', 5000000), %s))", (model,)) == 1


def test_building_answers_statement_timeout(pg_dsn, conn, model):
    """A vocabulary of a million random tokens: reading and building it take
    seconds; statement_timeout stops it within one."""
    write_vocab(conn, model, [], merges=[(97, 97, 97)], bump=False)
    conn.execute("INSERT INTO llm_vocab (model, token_id, token) "
                 "SELECT %s, i, CASE WHEN i < 256 THEN set_byte('\\x00'::bytea, 0, i) "
                 "ELSE decode(md5(i::text), 'hex') END FROM generate_series(0, 999999) i", (model,))
    # the first read of fresh rows sets their hint bits, which makes it
    # slower than any later one: vacuum first, then time the fastest of two
    # builds, each in a new backend as the timed-out ones below
    conn.execute("VACUUM llm_vocab")
    full = float("inf")
    for _ in range(2):
        conn.execute("UPDATE llm_model_config SET tokenizer_version = nextval('llm_model_version_seq') "
                     "WHERE model = %s", (model,))
        r = Runner(pg_dsn, "SELECT llm_encode('x', 'hostile')")
        t0 = time.perf_counter()
        r.start()
        r.join(120)
        assert r.error is None and r.result == ([120],), r.error or r.result
        full = min(full, r.ended - t0)
        r.conn.close()
    conn.execute("UPDATE llm_model_config SET tokenizer_version = nextval('llm_model_version_seq') "
                 "WHERE model = %s", (model,))
    for timeout in (0.3, full * 0.5):   # in the rows' read, then in the build
        if timeout > full * 0.5:
            continue
        r = Runner(pg_dsn, "SELECT llm_encode('x', 'hostile')", [f"SET statement_timeout = '{int(timeout * 1000)}ms'"])
        t0 = time.perf_counter()
        r.start()
        r.join(60)
        assert isinstance(r.error, psycopg.errors.QueryCanceled), r.error or r.result
        assert r.ended - t0 - timeout < 1.0, (timeout, r.ended - t0)
        r.conn.close()
    print(f"\nreading and building a tokenizer of 1M tokens: {full:.2f} s")
