#!/usr/bin/env bash
# Runs every test on a fresh machine: the one command in the README, and what
# CI runs (.ci/run).  Installs what it needs:
#   - system packages (Debian/Ubuntu, when run as root): compiler, make, zlib,
#     binutils, the tools to run a cluster as an unprivileged user;
#   - tox, in a virtual environment under build/;
# then runs tox: PostgreSQL 14, 15 and 16 (fetched as relocatable binaries),
# one after another.  Extra arguments go to tox (e.g. -e pg16 -- -k matmul).
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

exec "$VENV/bin/tox" "$@"
