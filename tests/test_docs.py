"""Every example in the user guide runs.

The pages of docs/ are read in the order of docs/README.md's table of
contents; their ```sql, ```sh and ```python blocks run in that order against
one database, so a page may use what an earlier page made (as a reader going
through the guide would).  How each kind of block runs, and the few
substitutions that let the examples name a user's paths, are written in
docs/README.md ("How the examples are tested"); this file implements it.
A block after <!-- expect-error --> must fail, and the ```text block that
follows it must be exactly the error psql prints.
"""
import os
import re
import shutil
import subprocess
import sys
import time

import psycopg
import pytest

from pg_llm_cy.cluster import bindir_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
RUN_LANGS = {"sql", "sh", "python"}
OTHER_LANGS = {"text"}          # output shown to the reader; never run
SRV = "/srv/pg_llm"             # where the examples keep server-side files
DOCS_DB = "pg_llm_docs"

pytestmark = pytest.mark.heavy


class Block:
    def __init__(self, page, line, lang, code, expect_error=False):
        self.page, self.line, self.lang, self.code = page, line, lang, code
        self.expect_error = expect_error
        self.expected_output = None

    def __repr__(self):
        return f"{self.page}:{self.line}"


def parse_page(path):
    """The fenced blocks of a Markdown page, with their markers."""
    name = os.path.relpath(path, REPO)
    lines = open(path, encoding="utf-8").read().split("\n")
    blocks, i, pending_error = [], 0, False
    while i < len(lines):
        line = lines[i]
        if line.strip() == "<!-- expect-error -->":
            pending_error = True
        m = re.match(r"^```(\S*)\s*$", line)
        if m:
            lang, start = m.group(1), i + 1
            j = start
            while j < len(lines) and lines[j].rstrip() != "```":
                j += 1
            assert j < len(lines), f"{name}:{start}: unclosed code block"
            code = "\n".join(lines[start:j]) + "\n"
            assert lang in RUN_LANGS | OTHER_LANGS, \
                f"{name}:{start}: code block language {lang!r}: use one of " \
                f"{sorted(RUN_LANGS | OTHER_LANGS)} (every example is run)"
            if lang == "text" and blocks and blocks[-1].expect_error \
                    and blocks[-1].expected_output is None:
                blocks[-1].expected_output = code
            else:
                assert not (pending_error and lang != "sql"), \
                    f"{name}:{start}: expect-error applies to sql blocks"
                blocks.append(Block(name, start, lang, code, pending_error))
            pending_error = False
            i = j
        elif line.strip() and not line.startswith("<!--"):
            pending_error = False   # the marker goes right before its block
        i += 1
    for b in blocks:
        assert not b.expect_error or b.expected_output is not None, \
            f"{b}: an expect-error block needs the ```text block of its error after it"
    return blocks


def guide_pages():
    """docs/README.md first, then the pages its table of contents links, in order."""
    index = os.path.join(DOCS, "README.md")
    pages = [index]
    for target in re.findall(r"\]\(([\w-]+\.md)\)", open(index, encoding="utf-8").read()):
        p = os.path.join(DOCS, target)
        if p not in pages:
            pages.append(p)
    return pages


def test_every_page_is_in_the_guide():
    listed = {os.path.basename(p) for p in guide_pages()}
    on_disk = {f for f in os.listdir(DOCS) if f.endswith(".md")}
    assert on_disk <= listed, f"pages missing from docs/README.md: {sorted(on_disk - listed)}"
    for p in guide_pages():
        assert os.path.exists(p), f"docs/README.md links a missing page {p}"


def test_the_guide_has_examples_and_error_checks():
    blocks = [b for p in guide_pages() for b in parse_page(p)]
    langs = {b.lang for b in blocks}
    assert {"sql", "sh", "python"} <= langs
    assert sum(b.expect_error for b in blocks) >= 10


@pytest.fixture(scope="module")
def docs_env(cluster, pg_dsn, data_dir, tmp_path_factory):
    """The database the guide runs in, the server-side directory that stands
    for /srv/pg_llm, and the environment of its shell and Python blocks."""
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DOCS_DB}")
        c.execute("DROP ROLE IF EXISTS alice, bob")    # left by an interrupted run
        c.execute(f"CREATE DATABASE {DOCS_DB}")
    srv = cluster.make_readable_dir(os.path.join(cluster.base, "docs-srv"))
    # what a user would have downloaded: the GPT-2 tokenizer, a corpus and a
    # HuggingFace GPT-2 checkpoint directory (random weights of gpt2-small's
    # shape: there is no hub here)
    os.makedirs(os.path.join(srv, "gpt2"), exist_ok=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(data_dir, "gpt2", f), os.path.join(srv, "gpt2", f))
    shutil.copy(os.path.join(data_dir, "tinyshakespeare.txt"), srv)
    hf_dir = os.path.join(srv, "gpt2-hf")
    subprocess.run([sys.executable, "-c", f"""
import torch, transformers
torch.manual_seed(0)
m = transformers.GPT2LMHeadModel(transformers.GPT2Config())
m.save_pretrained({hf_dir!r})
"""], check=True)
    for root, dirs, files in os.walk(srv):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666)
    bindir = bindir_of(os.environ["PG_CONFIG"])
    env = dict(os.environ)
    host, port = cluster.base, str(cluster.port)
    env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + bindir + os.pathsep
               + env.get("PATH", ""),
               PGHOST=host, PGPORT=port, PGUSER="postgres", PGDATABASE=DOCS_DB,
               PG_LLM_DSN=cluster.dsn_for(DOCS_DB), PSQLRC="/dev/null")
    env.pop("PGPASSWORD", None)
    yield {"srv": srv, "env": env, "dsn": cluster.dsn_for(DOCS_DB),
           "python_cwd": str(tmp_path_factory.mktemp("docs-python"))}
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DOCS_DB}")


def substitute(code, lang, ctx):
    """The guide's stand-ins for a user's machine, mapped onto the test's."""
    code = code.replace(SRV, ctx["srv"])
    if lang == "sh":
        code = re.sub(r"/usr/lib/postgresql/\d+/bin/pg_config", os.environ["PG_CONFIG"], code)
        code = re.sub(r"(^|\s)sudo ", r"\1", code, flags=re.M)
        # package installs are resolved, not performed: the packages must exist
        code = code.replace("apt-get install -y", "apt-get install -y --simulate")
        if os.getuid() != 0:
            code = code.replace("apt-get update", "true")
    return code


def run_sql(code, env, timeout):
    script = "\\set ON_ERROR_STOP 1\n\\set SHOW_CONTEXT never\n" + code
    return subprocess.run(["psql", "-X", "-q", "-f", "-"], input=script, env=env, text=True,
                          capture_output=True, timeout=timeout)


def psql_errors(stderr):
    """psql's error lines without the psql:<stdin>:N: location prefix."""
    out = []
    for line in stderr.splitlines():
        line = re.sub(r"^psql:<stdin>:\d+: ", "", line)
        if re.match(r"^(ERROR|DETAIL|HINT):", line):
            out.append(line)
    return out


def run_block(b, ctx):
    code = substitute(b.code, b.lang, ctx)
    env, timeout = ctx["env"], 900
    if b.lang == "sql":
        r = run_sql(code, env, timeout)
        if b.expect_error:
            assert r.returncode != 0, f"{b}: expected an error, the block succeeded:\n{r.stdout}"
            got = psql_errors(r.stderr)
            want = b.expected_output.replace(SRV, ctx["srv"]).strip().splitlines()
            assert got == want, f"{b}: the error shown is not the error psql prints:\n" \
                                f"shown:  {want}\nprints: {got}\n{r.stderr}"
            return
    elif b.lang == "sh":
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=REPO, env=env,
                           text=True, capture_output=True, timeout=timeout)
    else:
        # elsewhere than the source tree: the installed package, as a user has it
        r = subprocess.run([sys.executable, "-"], input=code, cwd=ctx["python_cwd"], env=env,
                           text=True, capture_output=True, timeout=timeout)
    assert r.returncode == 0, f"{b} ({b.lang}) failed:\n{code}\n--- stdout\n{r.stdout[-3000:]}" \
                              f"\n--- stderr\n{r.stderr[-3000:]}"


def test_every_example_runs(docs_env):
    seconds = []
    for page in guide_pages():
        for b in parse_page(page):
            if b.lang in RUN_LANGS:
                t0 = time.perf_counter()
                run_block(b, docs_env)
                seconds.append((time.perf_counter() - t0, repr(b)))
    # where the guide's time goes (pytest -rP shows it)
    print("slowest examples:", ", ".join(f"{where} {s:.0f} s" for s, where in sorted(seconds)[-8:]))


def test_walkthrough(docs_env, data_dir):
    """docs/walkthrough.sql, as its header says to run it, in a fresh database."""
    env = dict(docs_env["env"], PGDATABASE="pg_llm_walkthrough")
    with psycopg.connect(docs_env["dsn"], autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS pg_llm_walkthrough")
        c.execute("CREATE DATABASE pg_llm_walkthrough")
    header = open(os.path.join(DOCS, "walkthrough.sql")).read().split("\n\n")[0]
    command = re.search(r"^--\s+(psql .*walkthrough\.sql.*)$", header, re.M).group(1)
    command = command.replace(SRV, data_dir)
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=REPO, env=env,
                       text=True, capture_output=True, timeout=900)
    assert r.returncode == 0, f"{command}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    # training from scratch on tinyshakespeare: random weights start at about
    # ln 50257 = 10.8; 150 steps bring the validation loss under 7, and it
    # never goes up between the evaluations
    untrained = float(re.search(r"^\s*val_loss\s*\n-+\n\s*([\d.]+)",
                                r.stdout.split("5. Before training")[1], re.M).group(1))
    assert 10.6 < untrained < 11.0, untrained
    with psycopg.connect(docs_env["dsn"].replace(DOCS_DB, "pg_llm_walkthrough")) as c:
        blocks = c.execute("SELECT count(*) FROM llm_dataset WHERE dataset = 'shakespeare'").fetchone()[0]
        assert blocks == (304223 - 1) // 64 + (33802 - 1) // 64     # tokens of train and val split
        curve = [float(v) for v, in c.execute(
            "SELECT val_loss FROM llm_train_log WHERE model = 'bard' AND val_loss IS NOT NULL "
            "AND step <= 150 ORDER BY step")]
        assert len(curve) == 3 and curve == sorted(curve, reverse=True) and curve[-1] < 7.0, curve
        assert c.execute("SELECT count(*) FROM llm_checkpoint WHERE model = 'bard'").fetchone()[0] >= 1
    assert "ROMEO" in r.stdout
    # fine-tuning taught it the speech; the checkpoint load undid that
    tuned = r.stdout.split("fine_tuned")[1].split("10. Back")[0]
    assert "or not to be" in tuned, tuned
    assert "or not to be" not in r.stdout.split("before_fine_tuning")[1]
    with psycopg.connect(docs_env["dsn"], autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS pg_llm_walkthrough")
