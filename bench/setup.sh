#!/bin/sh
# Install the outside tools the benchmark suite uses (Debian/Ubuntu; run as root).
#
#   sudo bench/setup.sh
#
# wrk drives HTTP load; PgBouncer and pgpool-II are baselines the suite starts privately
# on free ports (it never uses the system services these packages may install). The suite
# also needs what `make test` needs: PostgreSQL on 127.0.0.1:5432 and redis-server.
set -eu

PACKAGES="wrk pgbouncer pgpool2"
# Installed only when missing, so an existing PostgreSQL or Redis is left alone.
command -v redis-server >/dev/null 2>&1 || PACKAGES="$PACKAGES redis-server"
command -v pgbench >/dev/null 2>&1 || PACKAGES="$PACKAGES postgresql postgresql-client"
command -v taskset >/dev/null 2>&1 || PACKAGES="$PACKAGES util-linux"

if [ "$(id -u)" -ne 0 ]; then
    echo "bench/setup.sh installs Debian packages: run it as root (sudo bench/setup.sh)," >&2
    echo "or install them yourself: apt-get install -y $PACKAGES" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "no apt-get here: install these with your package manager: $PACKAGES" >&2
    exit 1
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $PACKAGES
echo "installed: $PACKAGES"
echo "Python tools (py-spy, matplotlib, rich) come with: .venv/bin/pip install -e '.[dev]'"
