#!/usr/bin/env python3
"""Fuzz every parser of outside bytes: .npy headers, zip archives (central
directory, local headers, deflate), safetensors headers, vocab.json,
merges.txt -- and the construction of tokenizers from random and
adversarial vocabularies and merge lists (bpe: pair explosions, prefix
chains, duplicates, huge and empty tokens, cycles), through
pg_llm_cy._kernels, compiled from the same Cython source as the server's
pg_llm.so -- and, with --dsn, bytea tensors, weights files, tokenizer files
and tokenizer rows written straight into the tables, through the server.

    python scripts/fuzz_parsers.py [-n 100000] [--parsers npy,zip,...] [--seed 1]
                                   [--asan] [--dsn DSN --sql-n 20000]
    python scripts/fuzz_parsers.py --asan-server .pg/pg16/bin/pg_config [--sql-n 20000]

Each parser gets valid seed inputs, mutated (bit flips, interesting bytes,
insertions, deletions, duplicated and spliced ranges, truncation, numbers
made huge) n times; a mutant must parse or raise ValueError.  Anything else
(another exception, a crash, an AddressSanitizer report) fails the run.
The inputs are a pure function of --seed, so a failing input is
reproduced by running again with the same arguments.

--asan builds the kernels with -fsanitize=address into a temporary directory
and runs the fuzzing there with the ASan runtime preloaded; --asan-server
builds pg_llm.so the same way (make PG_LLM_SANITIZE=address) into a copy of
a PostgreSQL tree, runs a cluster with the runtime preloaded and fuzzes
tensors, weights files and tokenizer files through SQL.
"""
import argparse
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.environ.get("PG_LLM_FUZZ_PATH"):       # the ASan build, when re-executed
    sys.path.insert(0, os.environ["PG_LLM_FUZZ_PATH"])
else:
    sys.path.append(REPO)

import numpy as np  # noqa: E402

from pg_llm_cy import _kernels as K  # noqa: E402

DATA = os.environ.get("PG_LLM_TEST_DATA", os.path.join(REPO, "..", "shared", "data"))


# ---------------------------------------------------------------------------
# seeds: small valid inputs of each format
# ---------------------------------------------------------------------------
def npz_bytes(arrays, compressed=False):
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def safetensors_bytes(arrays):
    header, offset, blobs = {}, 0, []
    for name, a in arrays.items():
        b = np.ascontiguousarray(a, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def tiny_gpt2(vocab=8, d=4, positions=4):
    rng = np.random.default_rng(0)
    arrays = {"wte.weight": rng.standard_normal((vocab, d)), "wpe.weight": rng.standard_normal((positions, d)),
              "ln_f.weight": np.ones(d), "ln_f.bias": np.zeros(d)}
    for k, shape in (("ln_1.weight", (d,)), ("ln_1.bias", (d,)), ("attn.c_attn.weight", (d, 3 * d)),
                     ("attn.c_attn.bias", (3 * d,)), ("attn.c_proj.weight", (d, d)), ("attn.c_proj.bias", (d,)),
                     ("ln_2.weight", (d,)), ("ln_2.bias", (d,)), ("mlp.c_fc.weight", (d, 4 * d)),
                     ("mlp.c_fc.bias", (4 * d,)), ("mlp.c_proj.weight", (4 * d, d)), ("mlp.c_proj.bias", (d,))):
        arrays["h.0." + k] = rng.standard_normal(shape)
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def seeds(data_dir=DATA):
    a = tiny_gpt2()
    npy = []
    for arr in (a["wte.weight"], np.zeros((2, 3, 4), np.float32), np.zeros(5, np.float64), np.zeros((), np.float32)):
        buf = io.BytesIO()
        np.save(buf, arr)
        npy.append(buf.getvalue()[:128])
    vocab = json.load(open(os.path.join(data_dir, "gpt2", "vocab.json"), encoding="utf-8"))
    small = {k: v for k, v in vocab.items() if v < 300}
    merges = open(os.path.join(data_dir, "gpt2", "merges.txt"), encoding="utf-8").read().split("\n")
    return {
        "npy": npy,
        "zip": [npz_bytes(a), npz_bytes(a, compressed=True), npz_bytes({"x": np.arange(10, dtype=np.float32)})],
        # the expected length (4 bytes, little-endian), then the raw deflate stream
        "inflate": [struct.pack("<I", len(b)) + _deflate(b)
                    for b in (b"", b"hello hello hello", bytes(range(256)) * 4,
                              bytes(random.Random(0).randrange(256) for _ in range(64)))],
        "safetensors": [safetensors_bytes(a), safetensors_bytes({"x": np.zeros((2, 2), np.float32)})],
        "vocab": [json.dumps(small).encode(), json.dumps(small, ensure_ascii=False).encode(),
                  json.dumps({**small, "<|endoftext|>": 300}).encode()],
        "merges": ["\n".join(merges[:400]).encode(), "\n".join(merges[:1] + merges[1000:1200]).encode()],
    }


def _deflate(b):
    import zlib
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(b) + c.flush()


# ---------------------------------------------------------------------------
# mutations
# ---------------------------------------------------------------------------
INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, ord("{"), ord("}"), ord('"'), ord(","), ord(":"), ord("\\"),
               ord("\n"), ord(" "), ord("9")]


def mutate(rng: random.Random, data: bytes, others) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        op = rng.randrange(10)
        n = len(b)
        if op == 0 and n:                                   # flip a bit
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:                                 # an interesting byte
            b[rng.randrange(n)] = rng.choice(INTERESTING)
        elif op == 2:                                       # insert random bytes
            i = rng.randrange(n + 1)
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 3 and n:                                 # delete a range
            i = rng.randrange(n)
            del b[i:i + rng.randrange(1, 33)]
        elif op == 4 and n:                                 # duplicate a range
            i = rng.randrange(n)
            j = min(n, i + rng.randrange(1, 65))
            k = rng.randrange(n + 1)
            b[k:k] = b[i:j]
        elif op == 5 and n:                                 # truncate
            del b[rng.randrange(n):]
        elif op == 6 and others:                            # splice with another seed
            o = rng.choice(others)
            if o:
                i, j = rng.randrange(n + 1), rng.randrange(len(o) + 1)
                b = b[:i] + o[j:]
        elif op == 7 and n >= 4:                            # a little-endian field made extreme
            i = rng.randrange(n - 3)
            b[i:i + 4] = struct.pack("<I", rng.choice((0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, n, n + 1)))
        elif op == 8 and n:                                 # a decimal number made huge / negative
            i = rng.randrange(n)
            b[i:i] = rng.choice((b"9999999999999999999999", b"-1", b"18446744073709551616", b"1e999", b"0"))
        elif op == 9 and n >= 8:                            # 64-bit field (zip64, safetensors length)
            i = rng.randrange(n - 7)
            b[i:i + 8] = struct.pack("<Q", rng.choice((0, 2 ** 63, 2 ** 64 - 1, n, n - 8, 1 << 40)))
    return bytes(b)


# ---------------------------------------------------------------------------
# the parsers, as the server calls them
# ---------------------------------------------------------------------------
_TOKENIZER = None


def _gpt2_tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = K.Tokenizer.from_files(os.path.join(DATA, "gpt2", "vocab.json"))
    return _TOKENIZER


def run_npy(b):
    K.npy_parse_header(b)


def run_zip(b):
    for name, method, crc, csize, usize, off in K.zip_entries(b)[:16]:
        if off + csize > len(b) or usize > (1 << 20):
            continue
        body = K.inflate_raw(b[off:off + csize], usize) if method == 8 else b[off:off + csize]
        if name.endswith(b".npy") and body:
            K.npy_parse_header(body[:4096])


def run_inflate(b):
    if len(b) < 4:
        raise ValueError("short")
    K.inflate_raw(b[4:], min(int.from_bytes(b[:4], "little"), 1 << 20))


def run_safetensors(b):
    if len(b) < 8:
        raise ValueError("short")
    n = int.from_bytes(b[:8], "little")
    K.safetensors_parse(b[8:8 + min(n, len(b) - 8)])


def run_vocab(b):
    data, offsets, special = K.parse_vocab_json(b)
    tok = K.Tokenizer(data, offsets, special)
    tok.encode("Hello wörld 123 ...")


def run_merges(b):
    _gpt2_tokenizer().parse_merges(b)


# ---------------------------------------------------------------------------
# tokenizer construction from random and adversarial vocabularies
# ---------------------------------------------------------------------------
def _gpt2_alphabet():
    """GPT-2's bytes_to_unicode: the characters merges.txt writes bytes as."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


ALPHABET = _gpt2_alphabet()
_GPT2_TOKENS = []


def _gpt2_tokens():
    """GPT-2's tokens as bytes, by id."""
    if not _GPT2_TOKENS:
        vocab = json.load(open(os.path.join(DATA, "gpt2", "vocab.json"), encoding="utf-8"))
        inv = {c: b for b, c in ALPHABET.items()}
        _GPT2_TOKENS.extend(bytes(inv.get(ch, 63) for ch in k) for k in sorted(vocab, key=vocab.get))
    return _GPT2_TOKENS


def vocabulary(rng: random.Random):
    """A random or adversarial vocabulary: (tokens, special flags, kind)."""
    kind = rng.choice(("chain", "explosion", "random", "duplicates", "huge", "empty", "gpt2", "mixed"))
    tokens = [bytes([b]) for b in range(256)]
    if rng.random() < 0.05:                       # not byte-level: must be refused
        tokens = [t for t in tokens if rng.random() < 0.9]
    if kind in ("chain", "mixed"):                # every prefix and suffix a token
        letter = bytes([rng.randrange(256)])
        tokens += [letter * k for k in range(2, rng.choice((10, 60, 300)) if rng.random() > 0.01 else 1500)]
    if kind in ("explosion", "mixed"):            # all strings over a tiny alphabet
        import itertools
        alpha = bytes(rng.sample(range(256), rng.choice((2, 3))))
        for n in range(2, rng.choice((4, 6, 8)) if rng.random() > 0.01 else 10):
            tokens += [bytes(p) for p in itertools.product(alpha, repeat=n)]
    if kind in ("random", "mixed"):
        tokens += [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(1, rng.choice((50, 500, 3000))))]
    if kind == "duplicates":
        tokens += [rng.choice(tokens) for _ in range(rng.randrange(1, 500))]
    if kind == "huge":
        big = rng.randbytes(64) * rng.choice((1, 10, 100, 4000))
        tokens += [big, big[:len(big) // 2], big[len(big) // 2:], big + big]
    if kind == "empty":
        tokens += [b""] * rng.randrange(1, 20) + [b"<|endoftext|>", b"<|x|>"]
    if kind == "gpt2":
        tokens += _gpt2_tokens()[256:256 + rng.choice((100, 1000, 5000))]
    if rng.random() < 0.5:                        # ids in any order
        head = rng.randrange(len(tokens))
        part = tokens[head:]
        rng.shuffle(part)
        tokens = tokens[:head] + part
    rare = 0.01 if rng.random() < 0.5 else 0.0
    special = [1 if (t.startswith(b"<|") or (len(t) != 1 and rng.random() < rare)) else 0 for t in tokens]
    return tokens, special, kind


def merges_text(rng, tokens):
    """merges.txt lines over the vocabulary: real splits, pairs whose merge
    is no token, cycles, repeats, tokens it lacks and broken lines."""
    enc = [("".join(ALPHABET[b] for b in t)) for t in tokens if 0 < len(t) < 200]
    lines = ["#version: 0.2"]
    for _ in range(rng.randrange(0, 200)):
        r = rng.random()
        if r < 0.5 and enc:
            t = rng.choice(enc)
            k = rng.randrange(1, max(len(t), 2))
            lines.append(f"{t[:k]} {t[k:]}" if len(t) > 1 else f"{t} {t}")
        elif r < 0.7 and enc:
            a, b = rng.choice(enc), rng.choice(enc)
            lines += [f"{a} {b}", f"{b} {a}", f"{a}{b} {a}"]          # cycles
        elif r < 0.8 and len(lines) > 1:
            lines.append(rng.choice(lines[1:]))                      # repeats
        elif r < 0.9:
            lines.append("zz\u00ff\u0100 qq")                        # tokens it lacks
        else:
            lines.append(rng.choice(("", "a", "a b c", " ", "\u0100\u0100 ")))
    return "\n".join(lines).encode()


def run_bpe_case(rng):
    """Build a tokenizer from a generated vocabulary, encode, parse merges.
    Returns 'ok' or 'refused'; anything but ValueError is a bug."""
    tokens, special, _ = vocabulary(rng)
    data = np.frombuffer(b"".join(tokens) or b"\0", np.uint8).copy()
    offsets = np.zeros(len(tokens) + 1, np.int64)
    offsets[1:] = np.cumsum([len(t) for t in tokens])
    try:
        tok = K.Tokenizer(data, offsets, np.array(special, np.uint8))
    except ValueError:
        return "refused"
    sample = b"".join(rng.choice(tokens) for _ in range(rng.randrange(1, 30)))
    for text in (sample, sample.decode("utf-8", "replace").encode(), rng.randbytes(50),
                 b"Hello world", rng.choice(tokens) * rng.randrange(1, 8)):
        ids = tok.encode(text)
        assert tok.decode_bytes(ids) == text, "encode/decode is not a round trip"
    try:
        tok.parse_merges(merges_text(rng, tokens))
    except ValueError:
        pass
    return "ok"


def fuzz_bpe(n, seed=1, report=None, case_timeout=20.0):
    """n generated vocabularies and merge lists; each case must finish
    within case_timeout seconds (else the process exits: a hang).  Returns
    ({outcome: count}, slowest case seconds)."""
    import faulthandler
    rng = random.Random(f"bpe:{seed}")
    counts, slowest = {"ok": 0, "refused": 0}, 0.0
    for i in range(n):
        state = rng.getstate()
        faulthandler.dump_traceback_later(case_timeout, exit=True)
        t = time.perf_counter()
        try:
            counts[run_bpe_case(rng)] += 1
        except Exception as e:          # noqa: BLE001 -- anything else is a bug
            rng.setstate(state)
            raise AssertionError(f"bpe case #{i} (seed {seed}): {type(e).__name__}: {e}; "
                                 f"kind {vocabulary(rng)[2]}") from e
        finally:
            faulthandler.cancel_dump_traceback_later()
        slowest = max(slowest, time.perf_counter() - t)
        if report and (i + 1) % report == 0:
            print(f"  bpe: {i + 1}/{n} (slowest case {slowest:.2f} s)", flush=True)
    return counts, slowest


PARSERS = {"npy": run_npy, "zip": run_zip, "inflate": run_inflate, "safetensors": run_safetensors,
           "vocab": run_vocab, "merges": run_merges}


def fuzz(name, n, seed=1, report=None):
    """Mutate the seeds of a parser n times; returns (accepted, rejected).
    Raises AssertionError on an exception other than ValueError."""
    corpus = seeds()[name]
    run = PARSERS[name]
    rng = random.Random(f"{name}:{seed}")
    ok = rejected = 0
    for i in range(n):
        data = mutate(rng, rng.choice(corpus), corpus)
        try:
            run(data)
            ok += 1
        except ValueError:
            rejected += 1
        except Exception as e:          # noqa: BLE001 -- anything else is a bug
            raise AssertionError(f"{name} input #{i} (seed {seed}): {type(e).__name__}: {e}; "
                                 f"input {data[:200]!r}") from e
        if report and (i + 1) % report == 0:
            print(f"  {name}: {i + 1}/{n}", flush=True)
    return ok, rejected


# ---------------------------------------------------------------------------
# the same through the server
# ---------------------------------------------------------------------------
TENSOR_CALLS = [
    ("SELECT pg_llm_matmul(%s, %s, %s, %s, %s)", 2, 3),
    ("SELECT pg_llm_add(%s, %s)", 2, 0),
    ("SELECT pg_llm_softmax(%s, %s, %s)", 1, 2),
    ("SELECT pg_llm_layernorm(%s, %s, %s, 1e-5)", 3, 0),
    ("SELECT pg_llm_cross_entropy(%s, %s)", 1, 1),
    ("SELECT pg_llm_gelu_backward(%s, %s)", 2, 0),
    ("SELECT pg_llm_transpose(%s, %s, %s)", 1, 2),
    ("SELECT pg_llm_attention(%s, %s, %s, %s, %s, %s, %s, %s)", 5, 3),
    ("SELECT * FROM pg_llm_adamw_step(%s, %s, %s, %s, 1e-3, 0.9, 0.999, 1e-8, 0.0, %s)", 4, 1),
    ("SELECT pg_llm_tensor_array(%s)", 1, 0),
]


def sql_fuzz(dsn, n, seed=1, server_dir=None, report=None):
    """Bytea tensors and shapes, weights files and tokenizer files through
    the server; each call must return or fail with a SQLSTATE outside class
    XX, and the server must not restart.  Returns {kind: calls}."""
    import psycopg
    rng = random.Random(f"sql:{seed}")
    counts = {"tensors": 0, "weights files": 0, "tokenizer files": 0, "tokenizer rows": 0}
    corpus = seeds()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_llm")
        # a case that hangs meets statement_timeout: 57014, counted as a failure
        c.execute("SET statement_timeout = '20s'")
        started = c.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        c.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = 'fuzz'")
        c.execute("SELECT llm_create_model('fuzz', 1, 1, 4, 4, 300, 1)")

        def call(sql, params):
            try:
                c.execute(sql, params)
            except psycopg.Error as e:
                if c.broken or c.closed:
                    raise AssertionError(f"the server dropped the connection on {sql} {params!r:.300}")
                if not e.sqlstate or e.sqlstate.startswith("XX") or e.sqlstate == "57014":
                    raise AssertionError(f"internal error or hang {e.sqlstate} on {sql} {params!r:.300}: {e}")

        for i in range(n):
            kind = rng.random()
            if kind < 0.6:
                sql, n_bytea, n_int = rng.choice(TENSOR_CALLS)
                params = [mutate(rng, np.float32(rng.random()).tobytes() * rng.randrange(0, 24), [])
                          for _ in range(n_bytea)]
                params += [rng.choice((0, 1, 2, 3, 4, -1, 7, 2 ** 31 - 1)) for _ in range(n_int)]
                call(sql, params)
                counts["tensors"] += 1
            elif kind < 0.8 and server_dir:
                fmt = rng.choice(("zip", "safetensors"))
                data = mutate(rng, rng.choice(corpus[fmt]), corpus[fmt])
                path = os.path.join(server_dir, "fuzz." + ("npz" if fmt == "zip" else "safetensors"))
                with open(path, "wb") as f:
                    f.write(data)
                os.chmod(path, 0o644)
                call("SELECT pg_llm_import_npz(%s, 'fuzz', 1)", (path,))
                counts["weights files"] += 1
            elif kind < 0.9:
                tokenizer_rows(c, rng, call)
                counts["tokenizer rows"] += 1
            else:
                which = rng.choice(("vocab", "merges"))
                data = mutate(rng, rng.choice(corpus[which]), corpus[which])
                text = data.decode("utf-8", "replace").replace("\x00", "")
                if which == "vocab":
                    call("SELECT pg_llm_load_bpe_vocab_text(%s, 'fuzz')", (text,))
                else:
                    c.execute("SELECT pg_llm_load_bpe_vocab_text(%s, 'fuzz')", (corpus["vocab"][0].decode(),))
                    call("SELECT pg_llm_load_bpe_merges_text(%s, 'fuzz')", (text,))
                counts["tokenizer files"] += 1
            if report and (i + 1) % report == 0:
                print(f"  sql: {i + 1}/{n}", flush=True)
        assert c.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started, "the server restarted"
        c.execute("SELECT llm_drop_model('fuzz')")
    return counts


def tokenizer_rows(c, rng, call):
    """A generated vocabulary and merge rows written straight into llm_vocab
    and llm_merges, as an admin may -- ids with gaps or out of range, any
    bytes -- then encoding with it."""
    tokens, special, _ = vocabulary(rng)
    ids, gap = [], 0
    for i in range(len(tokens)):                  # sometimes with gaps, some far out
        if rng.random() < 0.002:
            gap += rng.choice((1, 1000, 2 ** 24))
        ids.append(i + gap)
    c.execute("DELETE FROM llm_merges WHERE model = 'fuzz'")
    c.execute("DELETE FROM llm_vocab WHERE model = 'fuzz'")
    with c.cursor().copy("COPY llm_vocab (model, token_id, token, special) FROM STDIN") as cp:
        for i, t, sp in zip(ids, tokens, special):
            cp.write_row(("fuzz", i, t, bool(sp)))
    merges = [(r, rng.choice((-1, 0, 5, len(tokens), 2 ** 31 - 1)), rng.randrange(-5, len(tokens) + 5),
               rng.randrange(len(tokens) + 5)) for r in range(rng.randrange(1, 20))]
    with c.cursor().copy("COPY llm_merges (model, rank, left_id, right_id, merged_id) FROM STDIN") as cp:
        for m in merges:
            cp.write_row(("fuzz",) + m)
    c.execute("UPDATE llm_model_config SET tokenizer_version = nextval('llm_model_version_seq') "
              "WHERE model = 'fuzz'")
    text = b"".join(rng.choice(tokens) for _ in range(rng.randrange(1, 20))).decode("utf-8", "replace")
    call("SELECT llm_encode(%s, 'fuzz')", (text.replace("\x00", ""),))


# ---------------------------------------------------------------------------
# AddressSanitizer build
# ---------------------------------------------------------------------------
def asan_reexec(argv):
    tmp = tempfile.mkdtemp(prefix="pg_llm_asan_")
    pkg = os.path.join(tmp, "pg_llm_cy")
    shutil.copytree(os.path.join(REPO, "pg_llm_cy"), pkg,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = dict(os.environ, CFLAGS="-fsanitize=address -fno-omit-frame-pointer -O1 -g",
               LDFLAGS="-fsanitize=address", PG_LLM_DEBUG="1")
    print(f"building the kernels with AddressSanitizer into {tmp} ...", flush=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", tmp,
                    "--build-temp", os.path.join(tmp, "build")], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    so = [os.path.join(pkg, f) for f in os.listdir(pkg) if f.startswith("_kernels") and f.endswith(".so")][0]
    syms = subprocess.run(["nm", "-D", "--undefined-only", so], capture_output=True, text=True).stdout
    n_asan = syms.count("__asan_")
    if not n_asan:
        raise SystemExit(f"{so} is not instrumented (no __asan_ symbols)")
    print(f"{so}: instrumented ({n_asan} __asan_ references)", flush=True)
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    env = dict(os.environ, LD_PRELOAD=libasan, PG_LLM_FUZZ_PATH=tmp,
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1")
    args = [a for a in argv if a != "--asan"]
    r = subprocess.run([sys.executable, os.path.abspath(__file__)] + args, env=env)
    shutil.rmtree(tmp, ignore_errors=True)
    return r.returncode


def asan_server(pg_config, n, seed):
    """Build pg_llm.so with AddressSanitizer into a copy of the PostgreSQL
    tree, start a cluster with the ASan runtime preloaded, fuzz through it."""
    from pg_llm_cy.cluster import LocalCluster, bindir_of, install_extension
    tmp = tempfile.mkdtemp(prefix="pg_llm_asan_server_")
    os.chmod(tmp, 0o755)
    try:
        pg = os.path.join(tmp, "pg")
        shutil.copytree(os.path.dirname(bindir_of(pg_config)), pg, symlinks=True)
        print(f"building pg_llm.so with AddressSanitizer into {pg} ...", flush=True)
        install_extension(f"{pg}/bin/pg_config", REPO, "PG_LLM_SANITIZE=address")
        libdir = subprocess.run([f"{pg}/bin/pg_config", "--pkglibdir"], capture_output=True, text=True,
                                check=True).stdout.strip()
        syms = subprocess.run(["nm", "-D", "--undefined-only", os.path.join(libdir, "pg_llm.so")],
                              capture_output=True, text=True).stdout
        if "__asan_" not in syms:
            raise SystemExit("pg_llm.so is not instrumented")
        print(f"pg_llm.so: instrumented ({syms.count('__asan_')} __asan_ references)", flush=True)
        libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True,
                                 text=True, check=True).stdout.strip()
        cluster = LocalCluster(bindir_of(f"{pg}/bin/pg_config")).initdb()
        asan_log = os.path.join(cluster.base, "asan")
        cluster.start(env={"LD_PRELOAD": libasan,
                           "ASAN_OPTIONS": f"detect_leaks=0:abort_on_error=1:log_path={asan_log}"})
        try:
            server_dir = cluster.make_readable_dir(os.path.join(cluster.base, "files"))
            t = time.time()
            counts = sql_fuzz(cluster.dsn, n, seed, server_dir, report=max(n // 4, 1))
            reports = [f for f in os.listdir(cluster.base) if f.startswith("asan")]
            log = cluster.server_log()
            if reports or "AddressSanitizer" in log:
                for f in reports:
                    print(open(os.path.join(cluster.base, f), errors="replace").read()[:5000])
                raise SystemExit("AddressSanitizer reported an error in the server")
            print(f"through the ASan server: {counts}, no crash, no ASan report ({time.time() - t:.0f} s)")
        finally:
            cluster.destroy()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=100000, help="inputs per parser")
    ap.add_argument("--parsers", default=",".join(list(PARSERS) + ["bpe"]))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--asan", action="store_true")
    ap.add_argument("--dsn", help="also fuzz through this server (tensors, weights and tokenizer files)")
    ap.add_argument("--server-dir", help="a directory the server may read, for weights files")
    ap.add_argument("--sql-n", type=int, default=20000)
    ap.add_argument("--asan-server", metavar="PG_CONFIG",
                    help="build pg_llm.so with ASan against a copy of this PostgreSQL and fuzz through it")
    a = ap.parse_args(argv)
    if a.asan_server:
        asan_server(a.asan_server, a.sql_n, a.seed)
        return 0
    if a.asan:
        return asan_reexec(argv)
    print(f"kernels: {K.__file__}")
    for name in a.parsers.split(","):
        t = time.time()
        if name == "bpe":
            counts, slowest = fuzz_bpe(a.n, a.seed, report=max(a.n // 10, 1))
            print(f"bpe: {a.n} vocabularies and merge lists, {counts['ok']} built, {counts['refused']} "
                  f"refused, no crash, no hang (slowest case {slowest:.2f} s; {time.time() - t:.0f} s)",
                  flush=True)
            continue
        ok, rejected = fuzz(name, a.n, a.seed, report=max(a.n // 4, 1))
        print(f"{name}: {a.n} inputs, {ok} parsed, {rejected} rejected, no crash ({time.time() - t:.0f} s)",
              flush=True)
    if a.dsn:
        t = time.time()
        counts = sql_fuzz(a.dsn, a.sql_n, a.seed, a.server_dir, report=max(a.sql_n // 4, 1))
        print(f"through the server: {counts}, no crash ({time.time() - t:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
