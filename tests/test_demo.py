"""The README's first command, scripts/demo.sh: offline without the files it
stops at once and says which file to give; with them it builds, starts a
cluster, trains, plots and talks."""
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "scripts", "demo.sh")
NOWHERE = "http://127.0.0.1:9/"     # the discard port: connection refused at once


def demo_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PG_LLM_DATA", "PG_LLM_VOCAB", "PG_LLM_MERGES", "PG_LLM_CORPUS")}
    env.update(PG_LLM_DEMO_BUILD=str(tmp_path / "build"), PG_LLM_DOWNLOAD_BASE=NOWHERE,
               PG_LLM_CORPUS_URL=NOWHERE + "input.txt", **extra)
    return env


def test_offline_without_files_stops_at_once_naming_each_file(tmp_path):
    t0 = time.monotonic()
    r = subprocess.run([DEMO], env=demo_env(tmp_path), cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode == 2, r.stdout + r.stderr
    for needed in ("vocab.json", "merges.txt", "tinyshakespeare", "--vocab", "--merges",
                   "--corpus", "PG_LLM_VOCAB", "--data-dir"):
        assert needed in r.stderr, (needed, r.stderr)
    assert "==> " not in r.stdout          # nothing was built or started
    assert not os.path.exists(tmp_path / "build" / "demo-venv")
    assert elapsed < 60, elapsed


def test_a_given_file_that_does_not_exist_is_named(tmp_path, data_dir):
    r = subprocess.run([DEMO, "--data-dir", data_dir, "--vocab", str(tmp_path / "nope.json")],
                       env=demo_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert f"{tmp_path / 'nope.json'} does not exist" in r.stderr and "--vocab" in r.stderr
    assert "merges.txt:" not in r.stderr and "tinyshakespeare (" not in r.stderr   # found


def run_demo(tmp_path, data_dir, *args, port):
    rel_data = os.path.relpath(data_dir, tmp_path)
    return subprocess.run([DEMO, "--no-venv", "--data-dir", rel_data, "--pg-config",
                           os.path.abspath(os.environ["PG_CONFIG"]), *args],
                          env=demo_env(tmp_path, PG_LLM_DEMO_PORT=str(port),
                                       PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]),
                          cwd=tmp_path, capture_output=True, text=True, timeout=1200)


def readme_env(dsn, srv, bindir):
    """psql, the scripts and the client find the demo's server through
    PG_LLM_DSN and libpq's environment, as the paste block sets them."""
    fields = dict(kv.split("=", 1) for kv in dsn.split())
    env = dict(os.environ, PG_LLM_DSN=dsn, PGHOST=fields["host"], PGPORT=fields["port"],
               PGUSER=fields["user"], PGDATABASE=fields["dbname"], PSQLRC="/dev/null",
               PATH=os.path.dirname(sys.executable) + os.pathsep + bindir + os.pathsep + os.environ["PATH"])
    env.pop("PGPASSWORD", None)
    return env


@pytest.mark.heavy
def test_demo_then_the_readme_the_client_and_the_cli(tmp_path, data_dir, server_version_num):
    """The whole demo, with this Python (--no-venv: the package is installed
    here) and the tests' PostgreSQL, run from another directory with a
    relative --data-dir; then, against the cluster it leaves and with no
    extra arguments, every sql, sh and python block of the README (the
    docs' conventions: tests/test_docs.py), the CLI and the client; then
    --stop keeps the cluster's data, the next demo uses it, --cleanup
    removes it."""
    import psycopg
    import test_docs
    from pg_llm_cy.cluster import bindir_of, free_port
    port = free_port()
    t0 = time.monotonic()
    r = run_demo(tmp_path, data_dir, "--minutes", "0.5", "--tokens", "30", port=port)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    first_text = time.monotonic() - t0
    m = re.search(r"(\d+) steps; validation loss ([\d.]+) -> ([\d.]+)", out)
    assert m, out
    steps, before, after = int(m.group(1)), float(m.group(2)), float(m.group(3))
    assert steps >= 5 and before > 10 and after < before - 0.3, (steps, before, after)
    png = re.search(r"loss curve: (\S+\.png)", out).group(1)
    assert os.path.getsize(png) > 10000 and png.startswith(str(tmp_path))
    assert re.search(r"ROMEO:\S*\s*\S+", out.split("streaming text")[1])
    assert "val loss" in r.stderr          # the live progress bar
    # the paste block: PG_LLM_DSN, a CLI call, a psql call
    dsn = re.search(r"export PG_LLM_DSN='([^']+)'", out).group(1)
    assert f"port={port}" in dsn
    assert "python -m pg_llm_cy generate 'JULIET:'" in out and "psql \"$PG_LLM_DSN\" -c" in out
    cluster_dir = f"/tmp/pg_llm_demo_{os.getuid()}"
    bindir = bindir_of(os.environ["PG_CONFIG"])
    try:
        # what the README's blocks need on the server's side: /srv/pg_llm
        srv = os.path.join(cluster_dir, "srv")
        os.makedirs(os.path.join(srv, "gpt2"), exist_ok=True)
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(data_dir, "gpt2", f), os.path.join(srv, "gpt2", f))
        shutil.copy(os.path.join(data_dir, "tinyshakespeare.txt"), srv)
        hf = os.path.join(srv, "gpt2-hf")
        subprocess.run([sys.executable, "-c", f"""
import torch, transformers
torch.manual_seed(0)
m = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=256))
m.save_pretrained({hf!r})
"""], check=True)
        for f in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(data_dir, "gpt2", f), os.path.join(hf, f))
        for root, dirs, files in os.walk(srv):
            os.chmod(root, 0o777)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666)
        env = readme_env(dsn, srv, bindir)
        ctx = {"srv": srv, "env": env, "python_cwd": str(tmp_path)}
        blocks = test_docs.parse_page(os.path.join(REPO, "README.md"))
        assert sum(b.lang in test_docs.RUN_LANGS for b in blocks) >= 12
        for b in blocks:
            if b.lang in test_docs.RUN_LANGS:
                test_docs.run_block(b, ctx)
        # the CLI and the client, given nothing but the environment
        cli = subprocess.run([sys.executable, "-m", "pg_llm_cy", "generate", "JULIET:", "--max-tokens", "8"],
                             env=env, capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
        assert cli.returncode == 0 and cli.stdout.strip(), cli.stderr
        client = subprocess.run([sys.executable, "-c", "from pg_llm_cy.client import Client\n"
                                 "print(Client().evaluate('val', dataset='shakespeare'))"],
                                env=env, capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
        assert client.returncode == 0 and client.stdout.startswith("("), client.stderr
        # --stop keeps the data, the next demo starts the kept cluster
        r = subprocess.run([DEMO, "--stop"], env=demo_env(tmp_path, PG_LLM_DEMO_PORT=str(port)),
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "its data stays" in r.stdout, r.stdout + r.stderr
        assert os.path.exists(os.path.join(cluster_dir, "data", "PG_VERSION"))
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn, connect_timeout=3)
        r = run_demo(tmp_path, data_dir, "--minutes", "0.1", "--tokens", "5", port=port)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert "starting the kept local cluster" in r.stdout
        with psycopg.connect(dsn) as c:          # what the README made is still there
            assert c.execute("SELECT count(*) FROM llm_models WHERE model = 'tiny'").fetchone()[0] == 1
    finally:
        r = subprocess.run([DEMO, "--cleanup"], env=demo_env(tmp_path, PG_LLM_DEMO_PORT=str(port)),
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "stopped and removed" in r.stdout, r.stdout + r.stderr
    assert not os.path.exists(cluster_dir)
    print(f"\nfrom nothing to the first generated text (the demo's --minutes 0.5): {first_text:.0f} s")
