"""The shared cache (pyx/shim/shared_cache.c): one file per (database,
model, version, format) that every backend using the model maps, so the
server holds one copy of its weights and one of its built tokenizer; a new
version gets a new file and the old one goes when nobody maps it;
llm_drop_model removes the files; a damaged file or one of another server is
rebuilt before use; files nobody maps make room under pg_llm.model_cache_mb;
with no room on disk a backend keeps a private copy.
(A kill -9 during a build: test_crash.py.)"""
import os
import stat
import struct
import subprocess
import time

import psycopg
import pytest

from helpers import create_model, load_tokenizer, server_setting, sql_value
from pg_llm_cy import kernels as K

M = "shared_m"
SHAPE = dict(n_layer=2, n_head=2, n_embd=128, n_positions=64)     # 29 MB
HEADER_BYTES = 1136         # sizeof(PgllmCacheHeader)


@pytest.fixture
def model(conn):
    create_model(conn, M, seed=3, **SHAPE)
    yield M
    conn.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = %s", (M,))


def cache_dir(cluster):
    return os.path.join(cluster.data, "pgsql_tmp_pg_llm_cache")


def cache_files(cluster, fmt="float32"):
    d = cache_dir(cluster)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith("." + fmt)) \
        if os.path.isdir(d) else []


def file_of(cluster, conn, model=M, fmt="float32"):
    column = "tokenizer_version" if fmt == "tokenizer" else "version"
    version = sql_value(conn, f"SELECT {column} FROM llm_model_config WHERE model = %s", (model,))
    hits = [f for f in cache_files(cluster, fmt) if f.endswith(f".{version}.{fmt}")]
    assert len(hits) == 1, (version, cache_files(cluster, fmt))
    return hits[0]


def logits(c, model=M):
    return bytes(sql_value(c, "SELECT llm_logits('{1,2,3}', %s)", (model,)))


def stats(c):
    return c.execute("SELECT model_loads, cache_mb, shared_mb FROM pg_llm_backend_stats()").fetchone()


def mapping_kb(pid, path):
    """(Rss, Pss) in kB of the process's mappings of path."""
    rss = pss = 0
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(path)
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif inside and line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss, pss


def mapped(path):
    """Whether a backend holds the file's shared lock (maps it): /proc/locks."""
    inode = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return any(len(p) > 5 and p[1] == "FLOCK" and p[3] == "READ" and int(p[5].split(":")[2]) == inode
                   for p in (line.split() for line in f if "->" not in line))


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_two_backends_map_one_file(pg_dsn, cluster, model):
    with psycopg.connect(pg_dsn, autocommit=True) as a, psycopg.connect(pg_dsn, autocommit=True) as b:
        want = logits(a)
        assert logits(b) == want
        assert stats(a)[0] == 1 and stats(b)[0] == 0        # a built the file, b only mapped it
        path = file_of(cluster, a)
        size = os.path.getsize(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        pids = {sql_value(a, "SELECT pg_backend_pid()"), sql_value(b, "SELECT pg_backend_pid()")}
        (version, fmt, mb, backends), = a.execute(
            "SELECT version, format, mb, backends FROM llm_cache WHERE model = %s", (M,)).fetchall()
        assert version == sql_value(a, "SELECT version FROM llm_model_config WHERE model = %s", (M,))
        assert fmt == "float32" and mb * 2**20 == size and set(backends) == pids
        params_mb = sql_value(a, "SELECT bytes / 1048576.0 FROM llm_models WHERE model = %s", (M,))
        for c in (a, b):
            _, private_mb, shared_mb = stats(c)
            assert private_mb == 0 and abs(shared_mb - float(params_mb)) < 0.01
        # one copy in memory: each backend touched every page, and the
        # proportional sizes add up to the file once
        (rss_a, pss_a), (rss_b, pss_b) = (mapping_kb(pid, path) for pid in sorted(pids))
        assert min(rss_a, rss_b) * 1024 > 0.9 * size
        assert (pss_a + pss_b) * 1024 < 1.05 * size


def test_a_new_version_gets_a_new_file_and_the_old_one_goes(pg_dsn, conn, cluster, model):
    with psycopg.connect(pg_dsn, autocommit=True) as a, psycopg.connect(pg_dsn, autocommit=True) as b:
        before = logits(a)
        old = file_of(cluster, conn)
        conn.execute(f"SELECT llm_train_step('{M}', '{{{{1,2,3}}}}', '{{{{2,3,4}}}}')")
        after = logits(b)                    # b builds the new version; a still maps the old one
        assert after != before
        new = file_of(cluster, conn)
        assert new != old and os.path.exists(old)
        assert sorted(r[0] for r in conn.execute(
            "SELECT version FROM llm_cache WHERE model = %s", (M,))) == \
            sorted(int(p.split(".")[-2]) for p in (old, new))
        assert logits(a) == after            # a moves on: nobody maps the old file, it goes
        assert not os.path.exists(old) and not os.path.exists(old + ".ok")
        assert [r[0] for r in conn.execute("SELECT version FROM llm_cache WHERE model = %s", (M,))] \
            == [int(new.split(".")[-2])]


def test_drop_removes_the_files(pg_dsn, conn, cluster, model):
    with psycopg.connect(pg_dsn, autocommit=True) as a:
        logits(a)
        path = file_of(cluster, conn)
        a.execute("SELECT llm_drop_model(%s)", (M,))      # a maps it itself, and lets go first
    assert not os.path.exists(path) and not os.path.exists(path + ".ok")
    assert sql_value(conn, "SELECT count(*) FROM llm_cache WHERE model = %s", (M,)) == 0


def file_bytes(path):
    """The file without what differs between two builds of it: the header's
    checksum and build time."""
    with open(path, "rb") as f:
        b = bytearray(f.read())
    b[20:24], b[88:96] = bytes(4), bytes(8)
    return bytes(b)


def damage_data(path):
    with open(path, "r+b") as f:
        f.seek(4096 + 1000)
        byte = f.read(1)
        f.seek(4096 + 1000)
        f.write(bytes([byte[0] ^ 0x10]))


def truncate(path):
    os.truncate(path, os.path.getsize(path) - 4)


def another_server(path):
    """The header of a file written by another server: a different system
    identifier, under a correct header checksum."""
    with open(path, "r+b") as f:
        header = bytearray(f.read(HEADER_BYTES))
        sysid, = struct.unpack_from("<Q", header, 24)
        struct.pack_into("<Q", header, 24, sysid ^ 1)
        struct.pack_into("<I", header, 20, 0)
        struct.pack_into("<I", header, 20, crc32c(bytes(header)))
        f.seek(0)
        f.write(header)


@pytest.mark.parametrize("damage", [damage_data, truncate, another_server], ids=lambda f: f.__name__)
def test_a_damaged_or_foreign_file_is_rebuilt(pg_dsn, conn, cluster, model, damage):
    with psycopg.connect(pg_dsn, autocommit=True) as a:
        want = logits(a)
    path = file_of(cluster, conn)
    whole = file_bytes(path)
    damage(path)
    with psycopg.connect(pg_dsn, autocommit=True) as b:
        assert logits(b) == want
        assert stats(b)[0] == 1                 # b read the table again
    assert file_bytes(path) == whole            # and wrote the file anew
    with psycopg.connect(pg_dsn, autocommit=True) as c:     # and the new file serves
        assert logits(c) == want and stats(c)[0] == 0


def test_the_server_wide_bound_removes_files_nobody_maps(pg_dsn, conn, cluster, model):
    create_model(conn, "shared_other", seed=4, **SHAPE)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as a:
            want = logits(a)
        first = file_of(cluster, conn)
        for _ in range(500):          # a's backend ends a moment after its client
            if not mapped(first):
                break
            time.sleep(0.01)
        mb = os.path.getsize(first) / 2**20
        # room for what other sessions map and 1.5 models: every file nobody
        # maps of this size must go to fit a second one
        held = sum(os.path.getsize(f) for f in cache_files(cluster) if mapped(f)) / 2**20
        with server_setting(pg_dsn, "pg_llm.model_cache_mb", int(held + 1.5 * mb)):
            with psycopg.connect(pg_dsn, autocommit=True) as b:
                logits(b, "shared_other")        # no room for both: the unmapped one goes
                assert not os.path.exists(first)
                file_of(cluster, b, "shared_other")
                # while b maps it, shared_other's file stays: no room for M's
                with psycopg.connect(pg_dsn, autocommit=True) as c:
                    with pytest.raises(psycopg.errors.ProgramLimitExceeded,
                                       match="besides the cached models in use"):
                        logits(c)
                # b itself lets its own mapping go to make room
                assert logits(b) == want
                file_of(cluster, b)
                assert sql_value(b, "SELECT count(*) FROM llm_cache WHERE model = 'shared_other'") == 0
    finally:
        conn.execute("SELECT llm_drop_model('shared_other')")


def test_no_room_on_disk_keeps_a_private_copy(pg_dsn, conn, cluster, model):
    """The cache directory on a 1 MB file system: the build fails with a
    WARNING and the backend serves from its own copy."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    with psycopg.connect(pg_dsn, autocommit=True) as a:
        want = logits(a)
    conn.execute("SELECT llm_drop_model(%s)", (M,))
    create_model(conn, M, seed=3, **SHAPE)
    d = cache_dir(cluster)
    owner = os.stat(d)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,mode=0700,uid={owner.st_uid},gid={owner.st_gid}",
                    "tmpfs", d], check=True)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as b:
            warnings = []
            b.add_notice_handler(lambda d: warnings.append((d.severity_nonlocalized, d.sqlstate,
                                                            d.message_primary)))
            assert logits(b) == want
            assert warnings and warnings[0][:2] == ("WARNING", "53100"), warnings
            assert "No space left on device" in warnings[0][2]
            loads, private_mb, shared_mb = stats(b)
            assert loads == 1 and private_mb > 20 and shared_mb == 0
            assert logits(b) == want and stats(b)[0] == 1      # the private copy serves on
        assert os.listdir(d) in ([], ["build.lock"])         # no partial file left
    finally:
        subprocess.run(["umount", d], check=True)


def test_a_version_this_transaction_wrote_is_not_shared(pg_dsn, conn, cluster, model):
    """It may never commit (and after a crash its number may come again):
    the call uses a private copy, and the file comes after the commit."""
    with psycopg.connect(pg_dsn) as a:          # one transaction
        a.execute(f"SELECT llm_train_step('{M}', '{{{{1,2,3}}}}', '{{{{2,3,4}}}}')")
        version = sql_value(a, "SELECT version FROM llm_model_config WHERE model = %s", (M,))
        mine = logits(a)
        loads, private_mb, shared_mb = stats(a)
        assert private_mb > 20 and shared_mb == 0
        assert not [f for f in cache_files(cluster) if f.endswith(f".{version}.float32")]
        a.commit()
    with psycopg.connect(pg_dsn, autocommit=True) as b:
        assert logits(b) == mine
        assert file_of(cluster, b).endswith(f".{version}.float32")


def test_a_new_extension_does_not_meet_the_old_ones_files(pg_dsn, cluster):
    """DROP EXTENSION and CREATE EXTENSION start the version sequence again:
    the same model name at the same version number is another model, and
    the cache knows it (the file names llm_model_config's OID)."""
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS shared_reuse")
        c.execute("CREATE DATABASE shared_reuse")
    dsn = pg_dsn.replace("dbname=postgres", "dbname=shared_reuse")
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_llm")
            create_model(c, "again", seed=1, **SHAPE)
            v1 = sql_value(c, "SELECT version FROM llm_model_config WHERE model = 'again'")
            first = logits(c, "again")
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("DROP EXTENSION pg_llm")
            c.execute("CREATE EXTENSION pg_llm")
            create_model(c, "again", seed=2, **SHAPE)
            assert sql_value(c, "SELECT version FROM llm_model_config WHERE model = 'again'") == v1
            create_model(c, "twin", seed=2, **SHAPE)
            second = logits(c, "again")
            assert second != first and second == logits(c, "twin")
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as c:
            c.execute("DROP DATABASE shared_reuse")


def test_a_version_number_handed_out_again_is_another_model(pg_dsn, conn, cluster, model):
    """A restore's setval can hand a version number out again, for other
    weights: the file of the old ones is not served (the config row's
    updated_at is part of the key)."""
    step = f"SELECT llm_train_step('{M}', '{{{{1,2,3}}}}', '{{{{2,3,4}}}}')"
    conn.execute(step)
    version = sql_value(conn, "SELECT version FROM llm_model_config WHERE model = %s", (M,))
    with psycopg.connect(pg_dsn, autocommit=True) as holder:
        old = logits(holder)                     # its file, held open
        conn.execute("SELECT setval('llm_model_version_seq', %s)", (version - 1,))
        conn.execute(step)
        assert sql_value(conn, "SELECT version FROM llm_model_config WHERE model = %s", (M,)) == version
        with psycopg.connect(pg_dsn) as truth:   # a private copy: the row written in this transaction
            truth.execute("UPDATE llm_model_config SET train_step = train_step WHERE model = %s", (M,))
            want = logits(truth)
            assert stats(truth)[1] > 20
            truth.rollback()
        assert want != old
        with psycopg.connect(pg_dsn, autocommit=True) as b:
            assert logits(b) == want
            assert stats(b)[0] == 1              # b rebuilt the file


# ---------------------------------------------------------------------------
# the tokenizer: built once per server, mapped by every backend
# ---------------------------------------------------------------------------
TEXT = "The quick brown fox, naïve café \u4e2d\u6587 -- 12345 tokens!"


@pytest.fixture
def tok_model(conn, model, data_dir):
    load_tokenizer(conn, M, data_dir)
    return M


def encode(c, model=M):
    return sql_value(c, "SELECT llm_encode(%s, %s)", (TEXT, model))


def pid_of(c):
    return sql_value(c, "SELECT pg_backend_pid()")


def test_the_tokenizer_is_built_once_and_mapped_by_every_backend(pg_dsn, conn, cluster, tok_model, data_dir):
    with psycopg.connect(pg_dsn, autocommit=True) as a, psycopg.connect(pg_dsn, autocommit=True) as b:
        want = list(K.Tokenizer.from_files(f"{data_dir}/gpt2/vocab.json").encode(TEXT))
        assert encode(a) == want
        path = file_of(cluster, a, fmt="tokenizer")
        inode = os.stat(path).st_ino
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert encode(b) == want
        assert os.stat(path).st_ino == inode            # b did not build it again
        for c in (a, b):                                # each reads the file's pages
            rss, _ = mapping_kb(pid_of(c), path)
            assert rss > 0
        (version, mb, backends), = a.execute(
            "SELECT version, mb, backends FROM llm_cache WHERE model = %s AND format = 'tokenizer'",
            (M,)).fetchall()
        assert version == sql_value(a, "SELECT tokenizer_version FROM llm_model_config WHERE model = %s", (M,))
        assert mb * 2**20 == os.path.getsize(path) and set(backends) == {pid_of(a), pid_of(b)}
        # the weights' file is another one, and generation uses both
        assert sql_value(b, "SELECT llm_generate('Hello', 3, 0, model => %s)", (M,))
        assert set(r[0] for r in b.execute("SELECT format FROM llm_cache WHERE model = %s", (M,))) \
            == {"float32", "tokenizer"}


def test_a_new_tokenizer_gets_a_new_file_and_the_old_one_goes(pg_dsn, conn, cluster, tok_model, data_dir):
    with psycopg.connect(pg_dsn, autocommit=True) as a:
        want = encode(a)
        old = file_of(cluster, conn, fmt="tokenizer")
        load_tokenizer(conn, M, data_dir)               # the same files: a new tokenizer_version
        with psycopg.connect(pg_dsn, autocommit=True) as b:
            assert encode(b) == want
        new = file_of(cluster, conn, fmt="tokenizer")
        assert new != old and os.path.exists(old)       # a still maps the old one
        assert encode(a) == want                        # a moves on: nobody maps the old file
        assert not os.path.exists(old) and not os.path.exists(old + ".ok")
        assert os.path.exists(new)


def test_drop_removes_the_tokenizer_file(pg_dsn, conn, cluster, tok_model):
    with psycopg.connect(pg_dsn, autocommit=True) as a:
        encode(a)
        path = file_of(cluster, conn, fmt="tokenizer")
        a.execute("SELECT llm_drop_model(%s)", (M,))   # a maps it itself, and lets go at commit
        assert not os.path.exists(path) and not os.path.exists(path + ".ok")
        assert sql_value(a, "SELECT count(*) FROM llm_cache WHERE model = %s", (M,)) == 0


@pytest.mark.parametrize("damage", [damage_data, truncate, another_server], ids=lambda f: f.__name__)
def test_a_damaged_tokenizer_file_is_rebuilt(pg_dsn, conn, cluster, tok_model, damage):
    with psycopg.connect(pg_dsn, autocommit=True) as a:
        want = encode(a)
    path = file_of(cluster, conn, fmt="tokenizer")
    whole = file_bytes(path)
    damage(path)
    with psycopg.connect(pg_dsn, autocommit=True) as b:
        assert encode(b) == want
    assert file_bytes(path) == whole                    # written anew, the same bytes
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        inode = os.stat(path).st_ino
        assert encode(c) == want and os.stat(path).st_ino == inode


def test_a_tokenizer_this_transaction_loaded_is_not_shared(pg_dsn, conn, cluster, model, data_dir):
    with psycopg.connect(pg_dsn) as a:                  # one transaction
        load_tokenizer(a, M, data_dir)
        version = sql_value(a, "SELECT tokenizer_version FROM llm_model_config WHERE model = %s", (M,))
        mine = encode(a)
        assert not [f for f in cache_files(cluster, "tokenizer") if f.endswith(f".{version}.tokenizer")]
        a.commit()
    with psycopg.connect(pg_dsn, autocommit=True) as b:
        assert encode(b) == mine
        assert file_of(cluster, b, fmt="tokenizer").endswith(f".{version}.tokenizer")


def test_a_tokenizer_file_is_best_effort(pg_dsn, conn, cluster, tok_model):
    """A tokenizer that does not fit pg_llm.model_cache_mb, or fits only by
    removing a model's weights file, is this backend's own copy instead."""
    with psycopg.connect(pg_dsn, autocommit=True) as a:
        want = encode(a)
        logits(a)
    weights = file_of(cluster, conn)
    tokenizer = file_of(cluster, conn, fmt="tokenizer")
    os.unlink(tokenizer)
    for _ in range(500):                 # a's backend ends a moment after its client
        if not mapped(weights):
            break
        time.sleep(0.01)
    held = sum(os.path.getsize(f) for f in cache_files(cluster) if mapped(f))
    for mb in (1, int((held + os.path.getsize(weights)) / 2**20) + 2):   # no room; room only without the weights
        with server_setting(pg_dsn, "pg_llm.model_cache_mb", mb):
            with psycopg.connect(pg_dsn, autocommit=True) as b:
                assert encode(b) == want
            assert os.path.exists(weights), mb
            assert not cache_files(cluster, "tokenizer"), mb
