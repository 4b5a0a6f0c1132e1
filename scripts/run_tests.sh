#!/usr/bin/env bash
# Runs every test on a fresh machine: the one command in the README, and what
# CI runs (.ci/run).  Installs what it needs:
#   - system packages (Debian/Ubuntu, when run as root): compiler, make, zlib,
#     binutils, the tools to run a cluster as an unprivileged user, and the
#     distribution's own PostgreSQL with its server headers;
#   - tox, in a virtual environment under build/;
# then runs tox: PostgreSQL 14, 15, 16, 17 and 18 (fetched as relocatable
# binaries), then the distribution's PostgreSQL (tox -e distro), one after
# another.  Extra arguments go to tox (e.g. -e pg18 -- -k matmul).
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for tool in gcc make nm objdump runuser useradd; do
  command -v "$tool" >/dev/null 2>&1 || need_pkgs+=("$tool")
done
[ -f /usr/include/zlib.h ] || need_pkgs+=("zlib.h")
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing system packages (missing: ${need_pkgs[*]})"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc make binutils zlib1g-dev util-linux passwd
  else
    echo "missing: ${need_pkgs[*]}; install gcc make binutils zlib1g-dev util-linux passwd" >&2
    exit 1
  fi
fi

# The distribution's PostgreSQL (Debian 12: postgresql-15) and its server
# headers, for tox -e distro: the README's install path, for real.
envs=pg14,pg15,pg16,pg17,pg18
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  major=$(apt-cache depends postgresql 2>/dev/null | sed -n 's/^ *Depends: postgresql-\([0-9][0-9]*\)$/\1/p' | head -n 1)
  if [ -n "$major" ]; then
    if ! dpkg -s "postgresql-$major" "postgresql-server-dev-$major" >/dev/null 2>&1; then
      echo "installing the distribution's PostgreSQL $major (postgresql-$major, postgresql-server-dev-$major)"
      apt-get update -q
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "postgresql-$major" "postgresql-server-dev-$major"
    fi
    export PG_LLM_DISTRO_PG_CONFIG="/usr/lib/postgresql/$major/bin/pg_config"
    envs="$envs,distro"
  fi
else
  echo "note: not root on Debian/Ubuntu: the distribution's PostgreSQL (tox -e distro) is not tested" >&2
fi

PYTHON=${PYTHON:-python3}
VENV=build/ci-venv
if [ ! -x "$VENV/bin/tox" ]; then
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "tox>=4"
fi

# Test data (GPT-2 tokenizer, tinyshakespeare): ../shared/data by default
if [ -z "${PG_LLM_TEST_DATA:-}" ] && [ -d ../shared/data ]; then
  export PG_LLM_TEST_DATA="$(cd ../shared/data && pwd)"
fi

if [ $# -eq 0 ]; then
  set -- -e "$envs"
fi
exec "$VENV/bin/tox" "$@"
