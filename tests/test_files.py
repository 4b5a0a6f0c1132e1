"""Server files: export never writes through a link someone planted (its
temporary file is created with O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600), and
import reads regular files only -- a symbolic link, a directory or a FIFO
(which would block an open forever) is an error at once.  Both stay
cancellable (test_cancel_llm.py)."""
import os
import pwd
import stat
import time

import psycopg
import pytest

from helpers import create_model, sql_value


@pytest.fixture(scope="module")
def model(conn, server_dir):
    create_model(conn, "files_m", n_layer=1, n_head=1, n_embd=8, n_positions=8, vocab=16)
    yield "files_m"
    conn.execute("SELECT llm_drop_model('files_m')")


def server_owned(cluster, path):
    if cluster.os_user:
        pw = pwd.getpwnam(cluster.os_user)
        os.lchown(path, pw.pw_uid, pw.pw_gid)


def error_of(c, sql, params=()):
    with pytest.raises(psycopg.Error) as e:
        c.execute(sql, params)
    return e.value


def test_export_does_not_follow_a_planted_symlink(conn, cluster, server_dir, model):
    victim = os.path.join(server_dir, "files_victim.conf")
    with open(victim, "w") as f:
        f.write("precious\n")
    server_owned(cluster, victim)
    out = os.path.join(server_dir, "files_planted.npz")
    pid = sql_value(conn, "SELECT pg_backend_pid()")
    for target in (victim, os.path.join(server_dir, "does-not-exist-yet")):
        link = f"{out}.tmp.{pid}"
        os.symlink(target, link)
        try:
            e = error_of(conn, "SELECT pg_llm_export_npz(%s, %s)", (out, model))
            assert e.sqlstate == "58P02", e
            assert "could not create file" in e.diag.message_primary
            assert "never writes through it" in e.diag.message_hint
            assert os.path.islink(link) and not os.path.exists(out)
        finally:
            os.unlink(link)
    assert open(victim).read() == "precious\n"
    assert not os.path.exists(os.path.join(server_dir, "does-not-exist-yet"))


def test_export_file_is_private_and_replaces_a_link_not_its_target(conn, cluster, server_dir, model):
    victim = os.path.join(server_dir, "files_victim2.conf")
    with open(victim, "w") as f:
        f.write("precious\n")
    server_owned(cluster, victim)
    out = os.path.join(server_dir, "files_exported.safetensors")
    os.symlink(victim, out)         # the destination itself a link: renamed over, not written through
    try:
        assert sql_value(conn, "SELECT pg_llm_export_npz(%s, %s)", (out, model)) > 0
        assert not os.path.islink(out)
        assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
        assert open(victim).read() == "precious\n"
    finally:
        os.unlink(out)


def test_import_reads_regular_files_only(conn, cluster, server_dir, model):
    real = os.path.join(server_dir, "files_real.npz")
    conn.execute("SELECT pg_llm_export_npz(%s, %s)", (real, model))
    link = os.path.join(server_dir, "files_link.npz")
    fifo = os.path.join(server_dir, "files_fifo.npz")
    os.symlink(real, link)
    os.mkfifo(fifo)
    server_owned(cluster, fifo)
    os.chmod(fifo, 0o666)
    try:
        e = error_of(conn, "SELECT pg_llm_import_npz(%s, 'files_imp')", (link,))
        assert e.sqlstate == "42809" and "is a symbolic link, not a regular file" in e.diag.message_primary
        t0 = time.perf_counter()
        e = error_of(conn, "SELECT pg_llm_import_npz(%s, 'files_imp')", (fifo,))
        assert time.perf_counter() - t0 < 1.0              # no open() waiting for a writer
        assert e.sqlstate == "42809" and "is not a regular file" in e.diag.message_primary
        assert "FIFO" in e.diag.message_detail
        e = error_of(conn, "SELECT pg_llm_import_npz(%s, 'files_imp')", (server_dir,))
        assert e.sqlstate == "42809" and "directory" in e.diag.message_detail
        for fn in ("pg_llm_load_bpe_vocab", "pg_llm_load_bpe_merges"):
            e = error_of(conn, f"SELECT {fn}(%s, %s)", (fifo, model))
            assert e.sqlstate == "42809", (fn, e)
        assert sql_value(conn, "SELECT pg_llm_import_npz(%s, 'files_imp', 1)", (real,)) > 0
    finally:
        os.unlink(link)
        os.unlink(fifo)
        os.unlink(real)
        conn.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = 'files_imp'")
