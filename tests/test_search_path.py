"""Search-path attacks: every statement pg_llm runs resolves only to
pg_catalog and the extension's own objects, whatever the caller's
search_path and whatever other roles created.

An attacker role with CREATE on public (any user on PostgreSQL 14, a
database owner on 15 and later) plants, in public, a copy of every
pg_catalog function, aggregate and operator whose name pg_llm's own SQL
uses -- the names are read from the sources: the current install and
upgrade scripts and the SQL in the C shims, so a new call fails this test
too -- plus overloads of the extension's internal functions.  Each planted
object counts its calls on a sequence (which no rollback undoes) and raises
HIJACKED.  Then every SQL function of the extension runs as a superuser, as
a pgllm_admin member and as a plain role, with search_path = public,
pg_catalog (the planted copies first: an unqualified name in pg_llm would
find them), and CREATE EXTENSION and ALTER EXTENSION UPDATE run beside the
planted objects.  Nothing planted may run.
"""
import glob
import os
import re

import psycopg
import pytest

from helpers import create_model, load_tokenizer
import test_bad_input

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACKER = "llm_attacker"
HITS = "public.pg_llm_attack_hits"
VICTIM_PATH = "public, pg_catalog"
SAFE_PATH = "pg_catalog, public"          # the harness's own SQL: pg_catalog first

KEYWORDS = {"select", "from", "where", "in", "exists", "values", "coalesce", "rows", "any", "all", "cast",
            "not", "and", "or", "as", "on", "using", "returning", "into", "set", "array", "ordinality",
            "key", "primary", "check", "references", "if", "while", "loop", "perform", "return", "raise",
            "foreach", "table", "function", "procedure", "trigger", "execute", "insert", "update", "delete",
            "join", "left", "group", "order", "by", "limit", "with", "over", "filter", "returns", "default",
            "declare", "begin", "end", "then", "else", "elsif", "is", "null", "distinct", "between", "like",
            "for", "each", "row", "type", "role", "comment", "grant", "revoke", "create", "alter", "drop",
            "index", "sequence", "view", "routine", "language", "do", "found", "to", "storage", "external",
            "column", "add", "replace", "schema", "nologin", "public", "exception", "using", "errcode",
            "hint", "detail", "language", "c", "plpgsql", "immutable", "stable", "volatile", "strict",
            "parallel", "safe", "boolean", "bool", "int", "integer", "bigint", "text", "bytea", "real",
            "float4", "float8", "double", "precision", "jsonb", "timestamptz", "bigserial", "regprocedure",
            "numeric", "varchar", "name", "oid", "regclass", "out", "inout", "variadic", "setof", "record"}


# ---------------------------------------------------------------------------
# what pg_llm's SQL uses, read from the sources
# ---------------------------------------------------------------------------
def current_version():
    control = open(os.path.join(REPO, "pg_llm.control")).read()
    return re.search(r"default_version = '([^']+)'", control).group(1)


def script_sql():
    """The install script of the current version and the update script into it."""
    v = current_version()
    paths = [os.path.join(REPO, "sql", f"pg_llm--{v}.sql")] + \
        glob.glob(os.path.join(REPO, "sql", f"pg_llm--*--{v}.sql"))
    return [open(p).read() for p in paths]


def shim_sql():
    """The SQL statements in the C shims: adjacent string literals joined,
    printf conversions dropped."""
    out = []
    for path in glob.glob(os.path.join(REPO, "pyx", "shim", "*.c")):
        src = open(path).read()
        src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
        for m in re.finditer(r'(?:"(?:[^"\\\n]|\\.)*"\s*)+', src):
            text = "".join(re.findall(r'"((?:[^"\\\n]|\\.)*)"', m.group(0)))
            if re.search(r"\b(SELECT|INSERT|UPDATE|DELETE)\b", text):
                out.append(re.sub(r"%(?:l{0,2}[dus]|[sd])", " ", text))
    return out


def code_only(sql):
    """SQL without comments and string literals (their contents are no calls)."""
    sql = re.sub(r"--[^\n]*", " ", sql)
    return re.sub(r"'(?:[^']|'')*'", "''", sql)


def used_names():
    """(function names, operators) that pg_llm's SQL calls."""
    funcs, ops = set(), set()
    for sql in script_sql() + shim_sql():
        code = code_only(sql)
        for qual, name in re.findall(r"(?:([a-z_@]+)\.)?([A-Za-z_][A-Za-z0-9_]*)\s*\(", code):
            if name.lower() not in KEYWORDS and not name.startswith("llm_") or qual:
                funcs.add(name.lower())
        for op in re.findall(r"[+\-*/<>=~!@#%^&|?]+", code):
            if op not in ("=>", "@", "@extschema@") and not op.startswith("@"):
                ops.add(op)
        if re.search(r"\b(IN|DISTINCT)\b", code):
            ops |= {"=", "<>"}
        if re.search(r"\bBETWEEN\b", code):
            ops |= {">=", "<="}
    funcs.discard("extschema")
    return funcs, ops


def test_names_are_read_from_the_sources():
    funcs, ops = used_names()
    # what today's sources call: the list is derived, not written down
    assert {"nextval", "now", "count", "sum", "octet_length", "unnest", "generate_series",
            "jsonb_build_object", "format", "length", "cardinality", "shobj_description",
            "pg_extension_config_dump"} <= funcs, funcs
    assert {"=", "<>", ">", ">=", "<=", "+", "-", "*", "/", "%", "->>"} <= ops, ops


# ---------------------------------------------------------------------------
# static rules that make the dynamic test meaningful
# ---------------------------------------------------------------------------
def test_every_statement_from_c_goes_through_the_pinned_spi_helper():
    for path in glob.glob(os.path.join(REPO, "pyx", "shim", "*.c")):
        src = open(path).read()
        if os.path.basename(path) == "catalog.c":
            continue
        assert "SPI_connect" not in src, f"{path}: SPI_connect outside pgllm_spi_begin (catalog.c)"
        assert "SPI_finish" not in src, f"{path}: SPI_finish outside pgllm_spi_end (catalog.c)"


def test_scripts_and_functions_pin_search_path():
    for sql in script_sql():
        assert "SET LOCAL search_path = pg_catalog, pg_temp;" in sql
        for m in re.finditer(r"CREATE (?:OR REPLACE )?(FUNCTION|PROCEDURE) (\S+?)\((.*?)\$\$(.*?)\$\$;",
                             sql, flags=re.S):
            kind, name, head, body = m.groups()
            if "LANGUAGE C" in head or "LANGUAGE C " in m.group(0).split("$$")[0]:
                continue
            if kind == "FUNCTION":
                assert "SET search_path = pg_catalog, pg_temp" in head, f"{name}: search_path not pinned"
            else:
                # a procedure that commits cannot pin it: no operator, only qualified calls
                code = code_only(body)
                assert not re.search(r"[+\-*/<>=~!#%^&|?]", code.replace(":=", "")), \
                    f"{name}: an operator in a procedure resolves through the caller's search_path"
                for qual, fn in re.findall(r"(?:([a-z_@]+)\.)?([a-z_][a-z0-9_]*)\s*\(", code):
                    assert qual or fn in KEYWORDS, f"{name}: unqualified call {fn}()"


# ---------------------------------------------------------------------------
# the attack
# ---------------------------------------------------------------------------
BODY = ("BEGIN PERFORM pg_catalog.nextval('" + HITS + "'::pg_catalog.regclass); "
        "RAISE EXCEPTION 'HIJACKED by public.%', {sig}; END")


def plant(dsn, funcs, ops, ext_funcs):
    """As the attacker: copies in public of the pg_catalog functions,
    aggregates and operators of these names, and overloads of the
    extension's functions.  Returns how many objects were planted."""
    n = 0
    with psycopg.connect(dsn, user=ATTACKER, autocommit=True) as c:
        c.execute(f"CREATE SEQUENCE {HITS}")
        c.execute(f"GRANT USAGE, SELECT, UPDATE ON SEQUENCE {HITS} TO PUBLIC")

        def attempt(sql):
            nonlocal n
            try:
                c.execute(sql)
                n += 1
            except psycopg.Error:
                pass            # a signature plpgsql cannot have ("any", internal, ...)

        def body(sig):
            return BODY.replace("{sig}", "'" + sig.replace("'", "''") + "'")

        rows = c.execute(
            "SELECT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid), "
            "       pg_catalog.format_type(p.prorettype, NULL), p.proretset, p.prokind, "
            "       pg_catalog.format_type(a.aggtranstype, NULL) "
            "FROM pg_catalog.pg_proc p LEFT JOIN pg_catalog.pg_aggregate a ON a.aggfnoid = p.oid "
            "WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace "
            "AND p.proname = ANY(%s) AND p.prokind IN ('f', 'a')", (sorted(funcs),)).fetchall()
        for i, (name, args, ret, retset, kind, trans) in enumerate(rows):
            sig = f"{name}({args})"
            if kind == "f":
                attempt(f"CREATE FUNCTION public.{name}({args}) RETURNS {'SETOF ' if retset else ''}{ret} "
                        f"LANGUAGE plpgsql AS $x${body(sig)}$x$")
            else:       # an aggregate: its state function is the trap
                stype = ret if trans == "internal" else trans
                sargs = ", ".join(["s " + stype] + ([a for a in args.split(", ")] if args != "*" else []))
                attempt(f"CREATE FUNCTION public.pg_llm_attack_agg_{i}({sargs}) RETURNS {stype} "
                        f"LANGUAGE plpgsql AS $x${body(sig)}$x$")
                attempt(f"CREATE AGGREGATE public.{name}({args}) "
                        f"(SFUNC = public.pg_llm_attack_agg_{i}, STYPE = {stype})")
        rows = c.execute(
            "SELECT o.oprname, pg_catalog.format_type(o.oprleft, NULL), pg_catalog.format_type(o.oprright, NULL), "
            "       pg_catalog.format_type(o.oprresult, NULL), o.oprleft = 0 "
            "FROM pg_catalog.pg_operator o WHERE o.oprnamespace = 'pg_catalog'::pg_catalog.regnamespace "
            "AND o.oprname = ANY(%s)", (sorted(ops),)).fetchall()
        for i, (op, left, right, result, prefix) in enumerate(rows):
            sig = f"{left} {op} {right}"
            fargs = right if prefix else f"{left}, {right}"
            attempt(f"CREATE FUNCTION public.pg_llm_attack_op_{i}({fargs}) RETURNS {result} "
                    f"LANGUAGE plpgsql AS $x${body(sig)}$x$")
            side = "" if prefix else f"LEFTARG = {left}, "
            attempt(f"CREATE OPERATOR public.{op} ({side}RIGHTARG = {right}, "
                    f"FUNCTION = public.pg_llm_attack_op_{i})")
        # the extension's internal functions: overloads of other types
        for name, nargs in ext_funcs:
            args = ", ".join(["varchar"] * nargs)
            attempt(f"CREATE FUNCTION public.{name}({args}) RETURNS int "
                    f"LANGUAGE plpgsql AS $x${body(name)}$x$")
    return n


def hits(dsn):
    with psycopg.connect(dsn) as c:
        return c.execute(f"SELECT last_value, is_called FROM {HITS}").fetchone()


def arg_types(c, key):
    """Qualified names of a function's identity argument types
    ("integer[]" -> "pg_catalog._int4")."""
    return [c.execute("SELECT 'pg_catalog.' OPERATOR(pg_catalog.||) t.typname FROM pg_catalog.pg_type t "
                      "WHERE t.oid OPERATOR(pg_catalog.=) %s::pg_catalog.regtype", (t,)).fetchone()[0]
            for t in key[1]]


@pytest.fixture(scope="module")
def attack(cluster, pg_dsn, data_dir, server_dir, server_version_num):
    db = "pg_llm_attack"
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        for d in (db, db + "_install", db + "_update"):
            c.execute(f"DROP DATABASE IF EXISTS {d}")
            c.execute(f"CREATE DATABASE {d}")
        for r in (ATTACKER, "llm_victim", "llm_victim_admin"):
            c.execute(f"DROP ROLE IF EXISTS {r}")
            c.execute(f"CREATE ROLE {r} LOGIN")
        c.execute("GRANT pgllm_admin TO llm_victim_admin")
        c.execute("GRANT pg_read_server_files, pg_write_server_files TO llm_victim_admin")
    dsns = {k: cluster.dsn_for(d) for k, d in (("run", db), ("install", db + "_install"),
                                               ("update", db + "_update"))}
    previous = sorted((m.group(1) for p in glob.glob(os.path.join(REPO, "sql", "pg_llm--*.sql"))
                       if (m := re.fullmatch(r"pg_llm--([0-9.]+)\.sql", os.path.basename(p)))),
                      key=lambda v: tuple(map(int, v.split("."))))[-2]
    for k, dsn in dsns.items():
        with psycopg.connect(dsn, autocommit=True) as c:
            # (on 15 and later only the database owner may create in public:
            # this attacker is one)
            c.execute(f"GRANT CREATE ON SCHEMA public TO {ATTACKER}")
            if k == "run":
                c.execute("CREATE EXTENSION pg_llm")
                create_model(c, "bi", n_layer=1, n_head=2, n_embd=16, n_positions=32)
                load_tokenizer(c, "bi", data_dir)
                create_model(c, "bi_train", n_layer=1, n_head=2, n_embd=16, n_positions=32)
                create_model(c, "bi_tok", n_layer=1, n_head=1, n_embd=8, n_positions=8)
                c.execute("INSERT INTO llm_dataset (dataset, tokens, target, split) "
                          "SELECT d, array_fill(i, ARRAY[8]), array_fill(i + 1, ARRAY[8]), "
                          "CASE WHEN i % 4 = 0 THEN 'val' ELSE 'train' END "
                          "FROM generate_series(1, 12) i, unnest(ARRAY['bi', 'default']) d")
                c.execute("SELECT pg_llm_export_npz(%s, 'bi')", (os.path.join(server_dir, "bi_src.npz"),))
                c.execute("GRANT SELECT ON llm_dataset TO llm_victim")
            elif k == "update":
                c.execute(f"CREATE EXTENSION pg_llm VERSION '{previous}'")
    with psycopg.connect(dsns["run"]) as c:
        ext = c.execute("SELECT p.proname, p.pronargs FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid "
                        "JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_llm' "
                        "WHERE d.classid = 'pg_proc'::regclass AND p.proname LIKE 'pg_llm_train%%'").fetchall()
    funcs, ops = used_names()
    planted = {k: plant(dsn, funcs, ops, ext) for k, dsn in dsns.items()}
    yield dsns, planted, dict(data=data_dir, server=server_dir)
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        for d in (db, db + "_install", db + "_update"):
            c.execute(f"DROP DATABASE IF EXISTS {d}")
        for r in ("llm_victim", "llm_victim_admin", ATTACKER):
            c.execute(f"DROP ROLE IF EXISTS {r}")


def test_the_traps_work(attack):
    """A planted copy does win over pg_catalog for an unqualified name on the
    victim's search_path: the test would see an unprotected call."""
    dsns, planted, _ = attack
    assert planted["run"] > 300
    with psycopg.connect(dsns["run"], autocommit=True) as c:
        before = hits(dsns["run"])
        c.execute(f"SET search_path = {VICTIM_PATH}")
        with pytest.raises(psycopg.Error, match="HIJACKED"):
            c.execute("SELECT nextval('pg_llm_attack_hits')")
        with pytest.raises(psycopg.Error, match="HIJACKED"):
            c.execute("SELECT 1 WHERE 'a'::text = 'b'::text")
        assert hits(dsns["run"]) != before
    with psycopg.connect(dsns["run"], autocommit=True) as c:      # reset the count
        c.execute(f"SELECT pg_catalog.setval('{HITS}', 1, false)")


def test_create_and_update_extension_beside_planted_objects(attack):
    dsns, _, _ = attack
    for k, stmt in (("install", "CREATE EXTENSION pg_llm"), ("update", "ALTER EXTENSION pg_llm UPDATE")):
        with psycopg.connect(dsns[k], autocommit=True) as c:
            c.execute(f"SET search_path = {VICTIM_PATH}")
            c.execute(stmt)
            c.execute(f"SET search_path = {SAFE_PATH}")
            assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_llm'").fetchone()[0] \
                == current_version()
            c.execute(f"SET search_path = {VICTIM_PATH}")
            # the preset rows' trigger, the views and defaults made there
            c.execute("SELECT * FROM public.llm_models")
            c.execute("SELECT public.llm_create_model('made_here', 1, 1, 8, 8, 10, 1)")
            c.execute("UPDATE public.llm_model_config SET n_positions = 16 WHERE model OPERATOR(pg_catalog.=) 'gpt2-xl'")
        assert hits(dsns[k]) == (1, False), f"{stmt}: a planted object ran"


@pytest.mark.parametrize("role", ["postgres", "llm_victim_admin", "llm_victim"])
def test_every_function_runs_nothing_planted(attack, role):
    dsns, _, fill = attack
    dsn = dsns["run"]
    ran = errors = 0
    with psycopg.connect(dsn, user=role, autocommit=True) as c:
        c.execute("SET statement_timeout = '20s'")
        for key, (args, pre) in sorted(test_bad_input.CALLS.items()):
            name, types = key
            c.execute(f"SET search_path = {SAFE_PATH}")
            try:
                if pre:
                    c.execute(test_bad_input.fill(pre, fill))
                values = [c.execute(f"SELECT ({test_bad_input.fill(a, fill)})::{t}").fetchone()[0]
                          for a, t in zip(args, arg_types(c, key))]
            except psycopg.Error as e:
                assert "HIJACKED" not in str(e), f"{name}: a planted object ran in the setup (a pg_llm call there): {e}"
                assert role != "postgres", f"{name}: setup failed: {e}"
                continue        # a role that may not set this call up
            kind = c.execute("SELECT prokind, proretset FROM pg_proc WHERE oid = %s::regprocedure",
                             (f"public.{name}({', '.join(types)})",)).fetchone()
            casts = ", ".join(f"%s::{t}" for t in arg_types(c, key))
            call = f"public.{name}({casts})"
            sql = (f"CALL {call}" if kind[0] == "p" else
                   f"SELECT pg_catalog.count(*) FROM {call}" if kind[1] else f"SELECT {call}")
            c.execute(f"SET search_path = {VICTIM_PATH}")
            try:
                c.execute(sql, values)
                ran += 1
            except psycopg.Error as e:
                assert "HIJACKED" not in str(e), f"{name} as {role} ran a planted object: {e}"
                errors += 1     # permission denied for a plain role, say
    assert hits(dsn) == (1, False), "a planted object ran"
    # the superuser runs them all; pgllm_admin all but those whose setup reads
    # files with pg_read_file; the plain role what it may
    assert ran >= {"postgres": len(test_bad_input.CALLS), "llm_victim_admin": 55, "llm_victim": 30}[role], \
        (ran, errors)
