#!/usr/bin/env bash
# Install the system services the test suite needs (Redis, PostgreSQL, Chromium, DIALS, ...).
#
# Every script in .ci/services.d/ is sourced in name order; each one declares what it needs
# with `need_packages CMD PACKAGE...`: when CMD is not on PATH, PACKAGE... are installed with
# apt-get (root only, `apt-get update` run once).  Services are started by the tests
# themselves, on loopback, and stopped afterwards; this script only installs.
#
# Not root and something missing: say so and go on; the tests that need it fail in CI
# (CI=true) and skip elsewhere, naming the service.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

_updated=0
missing=()

need_packages() {
    local probe="$1"; shift
    if [[ "$probe" == /* ]]; then [ -e "$probe" ] && return 0
    else command -v "$probe" >/dev/null 2>&1 && return 0; fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        missing+=("$*")
        return 0
    fi
    if [ "$_updated" = 0 ]; then
        echo "services: apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || true
        _updated=1
    fi
    echo "services: installing $* (for $probe)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >/dev/null || { echo "services: could not install $*" >&2; missing+=("$*"); }
}

shopt -s nullglob
for script in .ci/services.d/*.sh; do
    # shellcheck source=/dev/null
    source "$script"
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "services: not installed (need root and apt-get): ${missing[*]}" >&2
fi
exit 0
