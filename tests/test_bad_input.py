"""Every SQL function of the extension, each argument in turn replaced by bad
values of its type (NULL, empty and truncated bytea, NaN and infinities,
zero, negative and overflowing sizes, unknown models, malformed arrays):
each call returns or raises an ERROR with a SQLSTATE outside class XX
(internal error), and the server never crashes.  The precise SQLSTATEs and
messages of each family are checked in the test_errors_*.py files; this
sweep makes sure no argument was forgotten.  A function added to the
extension without an entry here fails test_every_function_is_covered."""
import os

import psycopg
import pytest

from helpers import create_model, load_tokenizer

M = "'bi'"
MT = "'bi_train'"       # the model the training functions change


def T(n, scale=7):
    """A float32 tensor of n values in SQL."""
    return (f"pg_llm_tensor((SELECT array_agg((((i % {scale}) - 3)::real / {scale})::real) "
            f"FROM generate_series(1, {n}) i))")


# type -> bad values (SQL expressions)
BAD = {
    "text": ["NULL", "''", "'no_such_model'", "repeat('x', 100000)", "E'\\u00e9\\u4e2d'"],
    "integer": ["NULL", "0", "-1", "2147483647", "-2147483648"],
    "bigint": ["NULL", "0", "-1", "9223372036854775807"],
    "double precision": ["NULL", "'NaN'", "'Infinity'", "'-Infinity'", "-1", "0", "1e300"],
    "real": ["NULL", "'NaN'", "'Infinity'", "'-Infinity'", "-1", "0", "3e38"],
    "boolean": ["NULL"],
    "bytea": ["NULL", "''::bytea", "'\\x00'::bytea", "'\\x000000'::bytea", "'\\x0000c07f'::bytea",
              "'\\x0000807f0000807f'::bytea", T(3), T(1000)],
    "integer[]": ["NULL", "'{}'::int[]", "'{NULL}'::int[]", "'{{1,2},{3,4}}'::int[]", "'{-1}'::int[]",
                  "'{2147483647}'::int[]", "array_fill(1, ARRAY[3000])", "'[5:6]={1,2}'::int[]"],
    "text[]": ["NULL", "'{}'::text[]", "'{NULL}'::text[]", "'{\"\"}'::text[]"],
    "real[]": ["NULL", "'{}'::real[]", "'{NULL}'::real[]", "'{NaN,Infinity}'::real[]", "'{{1,2},{3,4}}'::real[]"],
}

VOCAB = "pg_read_file('{data}/gpt2/vocab.json')"
MERGES = "pg_read_file('{data}/gpt2/merges.txt')"
TRAIN_HP = ["1", "2", "8", "1e-3", "1e-4", "0", "10", "0.1", "0.9", "0.95", "1.0", "1", "0.0", "0", "1", "1",
            "10.0"]

# (name, identity argument types) -> (argument expressions, setup statement or None)
CALLS = {
    ("llm_beam_search", ("text", "integer", "integer", "text", "double precision", "integer", "boolean")):
        (["'Hello'", "2", "3", M, "1.0", "-1", "true"], None),
    ("llm_checkpoint_load", ("text", "bigint")):
        ([MT, "(SELECT max(id) FROM llm_checkpoint WHERE model = 'bi_train')"],
         "SELECT llm_checkpoint_save('bi_train', 'to load')"),
    ("llm_checkpoint_save", ("text", "text", "text")): ([MT, "'note'", "NULL"], None),
    ("llm_create_model", ("text", "integer", "integer", "integer", "integer", "integer", "integer")):
        (["'bi_new'", "1", "1", "8", "8", "10", "1"], None),
    ("llm_dataset_from_text", ("text", "text", "integer", "double precision", "text")):
        ([M, "repeat('The quick brown fox jumps over the lazy dog. ', 20)", "4", "0.1", "'bi_text'"], None),
    ("llm_decode", ("integer[]", "text")): (["'{15496,995}'::int[]", M], None),
    ("llm_drop_model", ("text",)):
        (["'bi_new'"], "SELECT llm_create_model('bi_new', 1, 1, 8, 8, 10, 1) "
                       "WHERE NOT EXISTS (SELECT 1 FROM llm_model_config WHERE model = 'bi_new')"),
    ("llm_encode", ("text", "text")): (["'Hello world'", M], None),
    ("llm_evaluate", ("text", "text", "text")): ([M, "'val'", M], None),
    ("llm_generate", ("text", "integer", "double precision", "integer", "double precision", "text", "integer",
                      "integer", "double precision", "text[]", "boolean")):
        (["'Hello'", "4", "0.8", "10", "0.9", M, "-1", "1", "1.1", "ARRAY['zzz']", "true"], None),
    ("llm_generate_stream", ("text", "integer", "double precision", "integer", "double precision", "text",
                             "integer", "integer", "double precision", "text[]", "boolean")):
        (["'Hello'", "4", "0.8", "10", "0.9", M, "-1", "1", "1.1", "ARRAY['zzz']", "true"], None),
    ("llm_generate_batch", ("text[]", "integer", "double precision", "integer", "double precision", "text",
                            "integer", "integer", "double precision", "text[]", "boolean")):
        (["ARRAY['Hello', 'The cat']", "4", "0.8", "10", "0.9", M, "-1", "1", "1.1", "ARRAY['zzz']", "true"],
         None),
    ("llm_gradients", ("text", "integer[]", "integer[]")): ([M, "'{1,2,3}'::int[]", "'{2,3,4}'::int[]"], None),
    ("llm_logits", ("integer[]", "text")): (["'{1,2,3}'::int[]", M], None),
    ("llm_loss", ("text", "integer[]", "integer[]")): ([M, "'{1,2,3}'::int[]", "'{2,3,4}'::int[]"], None),
    ("llm_perplexity", ("text", "text")): (["'Hello world'", M], None),
    ("llm_train", ("text", "integer", "integer", "integer", "double precision", "double precision", "integer",
                   "integer", "double precision", "double precision", "double precision", "double precision",
                   "integer", "double precision", "integer", "integer", "integer", "double precision", "text",
                   "integer", "double precision")):
        ([MT] + TRAIN_HP + [M, "1", "1e-8"], None),
    ("llm_train", ("text", "integer", "integer", "integer", "integer", "integer", "real", "real", "real", "real",
                   "real", "real", "integer", "real", "integer", "integer")):
        ([MT, "1", "1", "2", "16", "50257", "0.0", "0.9", "0.999", "1e-8", "0.01", "1e-3", "1", "1.0", "1", "1"],
         None),
    ("llm_train_run", ("text", "integer", "integer", "integer", "double precision", "double precision",
                       "integer", "integer", "double precision", "double precision", "double precision",
                       "double precision", "integer", "double precision", "integer", "integer", "integer",
                       "double precision", "integer", "text", "integer", "double precision")):
        ([MT] + TRAIN_HP + ["1", M, "1", "1e-8"], None),
    ("llm_train_step", ("text", "integer[]", "integer[]", "double precision", "double precision",
                        "double precision", "double precision", "double precision", "double precision")):
        ([MT, "'{1,2,3}'::int[]", "'{2,3,4}'::int[]", "1e-4", "0.0", "0.9", "0.999", "1e-8", "0.0"], None),
    ("pg_llm_adamw_step", ("bytea", "bytea", "bytea", "bytea", "real", "real", "real", "real", "real", "integer")):
        ([T(4), T(4), T(4), T(4), "1e-3", "0.9", "0.999", "1e-8", "0.0", "1"], None),
    ("pg_llm_add", ("bytea", "bytea")): ([T(4), T(4)], None),
    ("pg_llm_attention", ("bytea", "bytea", "bytea", "bytea", "bytea", "integer", "integer", "integer")):
        ([T(8), T(48), T(12), T(16), T(4), "2", "2", "4"], None),
    ("pg_llm_attention_backward", ("bytea", "bytea", "bytea", "bytea", "bytea", "bytea", "integer", "integer",
                                   "integer")):
        ([T(8), T(48), T(12), T(16), T(4), T(8), "2", "2", "4"], None),
    ("pg_llm_backend_stats", ()): ([], None),
    ("pg_llm_cache_stats", ()): ([], None),
    ("pg_llm_cache_files", ()): ([], None),
    ("pg_llm_info", ()): ([], None),
    ("pg_llm_cross_entropy", ("bytea", "integer")): ([T(4), "1"], None),
    ("pg_llm_cross_entropy", ("bytea", "integer[]")): ([T(8), "'{1,2}'::int[]"], None),
    ("pg_llm_cross_entropy_backward", ("bytea", "integer")): ([T(4), "1"], None),
    ("pg_llm_cross_entropy_backward", ("bytea", "integer[]")): ([T(8), "'{1,2}'::int[]"], None),
    ("pg_llm_dropout", ("bytea", "real", "boolean")): ([T(4), "0.5", "true"], None),
    ("pg_llm_dropout", ("bytea", "real", "boolean", "integer")): ([T(4), "0.5", "true", "1"], None),
    ("pg_llm_dropout_backward", ("bytea", "real", "boolean", "integer")): ([T(4), "0.5", "true", "1"], None),
    ("pg_llm_dropout_backward", ("bytea", "bytea", "bytea", "real", "boolean")):
        ([T(4), f"pg_llm_dropout({T(4)}, 0.5, true, 1)", T(4), "0.5", "true"], None),
    ("pg_llm_export_npz", ("text", "text")): (["'{server}/bi_out.npz'", M], None),
    ("pg_llm_gelu", ("bytea",)): ([T(4)], None),
    ("pg_llm_gelu_backward", ("bytea", "bytea")): ([T(4), T(4)], None),
    ("pg_llm_grad_clip", ("bytea", "real")): ([T(4), "1.0"], None),
    ("pg_llm_import_npz", ("text", "text", "integer")): (["'{server}/bi_src.npz'", "'bi_imp'", "2"], None),
    ("pg_llm_layernorm", ("bytea", "bytea", "bytea", "real")): ([T(8), T(4), T(4), "1e-5"], None),
    ("pg_llm_layernorm_backward", ("bytea", "bytea", "bytea", "real")): ([T(8), T(8), T(4), "1e-5"], None),
    ("pg_llm_load_bpe_merges", ("text", "text")):
        (["'{data}/gpt2/merges.txt'", "'bi_tok'"], f"SELECT pg_llm_load_bpe_vocab_text({VOCAB}, 'bi_tok')"),
    ("pg_llm_load_bpe_merges_text", ("text", "text")):
        ([MERGES, "'bi_tok'"], f"SELECT pg_llm_load_bpe_vocab_text({VOCAB}, 'bi_tok')"),
    ("pg_llm_load_bpe_vocab", ("text", "text")): (["'{data}/gpt2/vocab.json'", "'bi_tok'"], None),
    ("pg_llm_load_bpe_vocab_text", ("text", "text")): ([VOCAB, "'bi_tok'"], None),
    ("pg_llm_lr_schedule", ("integer", "integer", "integer", "real", "real")):
        (["5", "10", "100", "1e-3", "1e-4"], None),
    ("pg_llm_matmul", ("bytea", "bytea", "integer", "integer", "integer")): ([T(6), T(12), "2", "3", "4"], None),
    ("pg_llm_matmul_backward", ("bytea", "bytea", "bytea", "integer", "integer", "integer")):
        ([T(6), T(12), T(8), "2", "3", "4"], None),
    ("pg_llm_ones_like", ("bytea",)): ([T(4)], None),
    ("pg_llm_zeros_like", ("bytea",)): ([T(4)], None),
    ("pg_llm_softmax", ("bytea",)): ([T(4)], None),
    ("pg_llm_softmax", ("bytea", "integer", "integer")): ([T(8), "2", "4"], None),
    ("pg_llm_softmax_backward", ("bytea", "bytea")): ([T(4), T(4)], None),
    ("pg_llm_softmax_backward", ("bytea", "bytea", "integer", "integer")): ([T(8), T(8), "2", "4"], None),
    ("pg_llm_tensor", ("real[]",)): (["'{1,2}'::real[]"], None),
    ("pg_llm_tensor_array", ("bytea",)): ([T(4)], None),
    ("pg_llm_train_begin", ("text", "integer", "integer", "integer", "double precision", "double precision",
                            "integer", "integer", "double precision", "double precision", "double precision",
                            "double precision", "integer", "double precision", "integer", "integer", "integer",
                            "double precision", "text", "integer", "double precision", "integer")):
        ([MT] + TRAIN_HP + [M, "1", "1e-8", "1"], None),
    ("pg_llm_train_tick", ("text",)):
        ([MT], "SELECT pg_llm_train_begin('bi_train', " + ", ".join(TRAIN_HP) + ", 'bi', 1, 1e-8, 1)"),
    ("pg_llm_train_end", ("text",)): ([MT], None),
    ("pg_llm_require_primary", ("text",)): (["'llm_checkpoint_save'"], None),
    ("pg_llm_bpe_token_text", ("bytea", "boolean")): (["'\\x48656c6c6f20'::bytea", "false"], None),
    ("pg_llm_transpose", ("bytea", "integer", "integer")): ([T(6), "2", "3"], None),
}


@pytest.fixture(scope="module")
def catalog(conn):
    rows = conn.execute(
        "SELECT p.proname, coalesce(array_to_string(array(SELECT format_type(t, NULL) "
        "  FROM unnest(p.proargtypes) t), ','), ''), p.prokind, p.proretset "
        "FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass "
        "JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_llm' "
        "WHERE p.prorettype <> 'trigger'::regtype").fetchall()     # triggers: test_dump.py
    return {(name, tuple(a for a in args.split(",") if a)): (kind, retset) for name, args, kind, retset in rows}


@pytest.fixture(scope="module")
def setup(conn, data_dir, server_dir):
    create_model(conn, "bi", n_layer=1, n_head=2, n_embd=16, n_positions=32)
    load_tokenizer(conn, "bi", data_dir)
    create_model(conn, "bi_train", n_layer=1, n_head=2, n_embd=16, n_positions=32)
    create_model(conn, "bi_tok", n_layer=1, n_head=1, n_embd=8, n_positions=8)
    load_tokenizer(conn, "bi_tok", data_dir)
    conn.execute("DELETE FROM llm_dataset WHERE dataset IN ('bi', 'default')")
    conn.execute("INSERT INTO llm_dataset (dataset, tokens, target, split) "
                 "SELECT d, array_fill(i, ARRAY[8]), array_fill(i + 1, ARRAY[8]), "
                 "CASE WHEN i % 4 = 0 THEN 'val' ELSE 'train' END "
                 "FROM generate_series(1, 12) i, unnest(ARRAY['bi', 'default']) d")
    conn.execute("SELECT pg_llm_export_npz(%s, 'bi')", (os.path.join(server_dir, "bi_src.npz"),))
    started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
    models_before = {r[0] for r in conn.execute("SELECT model FROM llm_model_config")}
    yield dict(data=data_dir, server=server_dir)
    assert conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0] == started, "the server restarted"
    conn.execute("DELETE FROM llm_dataset WHERE dataset IN ('bi', 'default', 'bi_text')")
    # and whatever a mutated name created (llm_create_model('no_such_model', ...))
    made = {r[0] for r in conn.execute("SELECT model FROM llm_model_config")} - models_before
    for m in made | {"bi", "bi_train", "bi_tok"}:
        conn.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = %s", (m,))


def fill(sql, values):
    for k, v in values.items():
        sql = sql.replace("{" + k + "}", str(v))
    return sql


def statement(name, kind, retset, args):
    call = f"{name}({', '.join(args)})"
    if kind == "p":
        return f"CALL {call}"
    return f"SELECT count(*) FROM {call}" if retset else f"SELECT {call}"


def test_every_function_is_covered(catalog):
    missing = sorted(set(catalog) - set(CALLS))
    assert not missing, f"functions without an entry in CALLS: {missing}"
    stale = sorted(set(CALLS) - set(catalog))
    assert not stale, f"entries of functions that do not exist: {stale}"


@pytest.mark.parametrize("key", sorted(CALLS), ids=lambda k: f"{k[0]}/{len(k[1])}")
def test_bad_arguments(pg_dsn, catalog, setup, key):
    kind, retset = catalog[key]
    args, pre = CALLS[key]
    args = [fill(a, setup) for a in args]
    pre = fill(pre, setup) if pre else None
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("SET statement_timeout = '5s'")
        if MT in args:      # a fresh model: a mutation before (lr 3e38) may have ruined it
            create_model(c, "bi_train", n_layer=1, n_head=2, n_embd=16, n_positions=32)
        if pre:
            c.execute(pre)
        c.execute(statement(key[0], kind, retset, args))     # the valid call works
        # a bad value may be a valid but endless request (2^31 steps, a
        # 2^31-token generation): a shorter timeout ends those sooner
        c.execute("SET statement_timeout = '2s'")
        calls, problems = 0, []
        for i, typ in enumerate(key[1]):
            for bad in BAD[typ]:
                bad_args = args[:i] + [bad] + args[i + 1:]
                sql = statement(key[0], kind, retset, bad_args)
                if pre:
                    c.execute("SET statement_timeout = '30s'")
                    c.execute(pre)
                    c.execute("SET statement_timeout = '2s'")
                try:
                    c.execute(sql)
                except psycopg.Error as e:
                    if c.broken or c.closed:
                        pytest.fail(f"the connection died on argument {i + 1} = {bad[:60]}: {str(e)[:300]}")
                    # 57014: a valid but endless request (2^31 steps) met statement_timeout
                    if not e.sqlstate or e.sqlstate.startswith("XX"):
                        problems.append(f"argument {i + 1} = {bad[:60]}: {e.sqlstate} {str(e)[:200]}")
                calls += 1
                assert c.execute("SELECT 1").fetchone()[0] == 1
        assert not problems, "internal errors:\n" + "\n".join(problems)
        assert calls == sum(len(BAD[t]) for t in key[1])
