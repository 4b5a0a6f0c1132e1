"""The Dockerfile cannot be built here (no Docker): these check what can be
checked without it.  Its build stage runs `make install DESTDIR=/out`, and
the run stage copies /out over the official image: that install must put
everything under DESTDIR, in pg_config's directories; and .dockerignore
must not hide a file the build needs."""
import fnmatch
import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pg_config(flag):
    return subprocess.run([os.environ["PG_CONFIG"], flag], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_dockerfile_builds_on_the_official_image():
    text = open(os.path.join(REPO, "Dockerfile")).read()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert froms and all(f.startswith("postgres:16") for f in froms)
    assert "make install DESTDIR=/out" in text and "COPY --from=build /out/ /" in text
    assert "CREATE EXTENSION IF NOT EXISTS pg_llm" in text
    assert "libgomp1" in text      # pg_llm.so needs OpenMP's runtime


def test_destdir_install_puts_everything_under_destdir(tmp_path):
    subprocess.run(["make", "-s", "install", f"DESTDIR={tmp_path}",
                    f"PG_CONFIG={os.environ['PG_CONFIG']}"], cwd=REPO, check=True,
                   capture_output=True)
    lib = str(tmp_path) + pg_config("--pkglibdir")
    ext = str(tmp_path) + pg_config("--sharedir") + "/extension"
    assert os.path.exists(os.path.join(lib, "pg_llm.so"))
    installed = set(os.listdir(ext))
    wanted = {"pg_llm.control"} | {f for f in os.listdir(os.path.join(REPO, "sql"))
                                   if f.endswith(".sql")}
    assert wanted <= installed, wanted - installed


def test_dockerignore_keeps_the_sources():
    patterns = [p.strip() for p in open(os.path.join(REPO, ".dockerignore")) if p.strip()]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    if not tracked:     # not a git checkout (an sdist): nothing to compare
        tracked = [os.path.relpath(os.path.join(d, f), REPO)
                   for d, _, fs in os.walk(REPO) for f in fs]

    def ignored(path):
        for p in patterns:
            p = p.rstrip("/")
            if fnmatch.fnmatch(path, p) or path.startswith(p + "/") \
                    or (p.startswith("**/") and fnmatch.fnmatch(os.path.basename(path), p[3:])):
                return True
        return False
    needed = [f for f in tracked if f.startswith(("pyx/", "sql/")) or f in ("Makefile", "pg_llm.control")]
    assert needed and not [f for f in needed if ignored(f)]
