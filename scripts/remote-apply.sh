#!/usr/bin/env bash
# shellcheck disable=SC2016 # the backquotes in printf formats are Markdown, not commands
# Deploys one signed bundle to a host over SSH and reports the outcome the way GitHub Actions
# shows it: an annotation per outcome and a job summary table.
#
#   scripts/remote-apply.sh BUNDLE
#
# The host runs `smoker-deploy` (deploy/cloud/smoker-deploy) as the SSH forced command of the
# deploy key: this script can only send it `receive NAME` (the bundle on stdin), `apply NAME`
# (which runs `smoker-install --json apply --wait` on it) and `status`. Environment:
#   SSH_TARGET     user@host
#   SSH_KEY        the deploy key's private key file
#   KNOWN_HOSTS    known_hosts file with the host's key (StrictHostKeyChecking=yes)
#   DEPLOY_LABEL   name of the environment in messages (dev, staging, prod)
#   ATTEMPTS       tries while the profile is locked (exit 6), default 5
#   PAUSE_SECONDS  pause between them, default 60
# The exit status is smoker-install's (README, "Exit status and JSON output"), or 255 when SSH
# itself failed.
set -euo pipefail

bundle=${1:?usage: remote-apply.sh BUNDLE}
: "${SSH_TARGET:?}" "${SSH_KEY:?}" "${KNOWN_HOSTS:?}"
label=${DEPLOY_LABEL:-host}
attempts=${ATTEMPTS:-5}
pause=${PAUSE_SECONDS:-60}
summary=${GITHUB_STEP_SUMMARY:-/dev/null}
name=${bundle##*/}

remote() {
  ssh -i "$SSH_KEY" -o UserKnownHostsFile="$KNOWN_HOSTS" -o StrictHostKeyChecking=yes \
    -o BatchMode=yes "$SSH_TARGET" "$@"
}

# field JSON PATH: one field of smoker-install's JSON envelope ("" when absent or null).
field() {
  python3 -c '
import json, sys
try:
    v = json.loads(sys.argv[1])
    for k in sys.argv[2].split("."):
        v = v.get(k) if isinstance(v, dict) else None
except ValueError:
    v = None
print("" if v is None else v)
' "$1" "$2"
}

# One line for an annotation: no newlines, GitHub's escapes for % and line breaks.
oneline() { printf '%s' "$1" | sed -e 's/%/%25/g' | tr '\n' ' '; }

echo "sending $name to $label"
remote receive "$name" <"$bundle" || {
  rc=$?
  echo "::error title=$label / upload failed::could not send $name to $SSH_TARGET (exit status $rc): check the host, the deploy key and its forced command"
  printf '### %s: upload failed\n\n`%s` could not be sent (exit status %s).\n' "$label" "$name" "$rc" >>"$summary"
  exit "$rc"
}

attempt=1
while :; do
  rc=0
  out=$(remote apply "$name") || rc=$?
  printf '%s\n' "$out"
  kind=$(field "$out" kind)
  message=$(field "$out" message)
  if [ "$rc" -eq 6 ] && [ "$attempt" -lt "$attempts" ]; then
    echo "::notice title=$label / locked::$(oneline "$message") (attempt $attempt of $attempts; retrying in $pause s)"
    attempt=$((attempt + 1))
    sleep "$pause"
    continue
  fi
  break
done

profile=$(field "$out" data.profile)
version=$(field "$out" data.version)
generation=$(field "$out" data.generation)
result=$(field "$out" data.result)
health=$(field "$out" data.health.summary)
case $rc in
  0) level=notice title="$label / $result" text="$profile $version generation $generation ($result) ${health}" ;;
  2) level=error title="$label / usage" text="the deploy sent a wrong command line: $message" ;;
  3) level=error title="$label / bundle rejected" text="the bundle failed verification on the host, nothing was installed: $message" ;;
  4) level=error title="$label / refused by policy" text="the host refused the bundle (key scope, environment, architecture, downgrade or host access): $message" ;;
  5) level=error title="$label / preflight" text="preflight found problems, nothing was changed: $message" ;;
  6) level=error title="$label / locked" text="the profile was still locked after $attempts attempts: $message" ;;
  7) level=error title="$label / rolled back" text="the new generation failed its health gate; the previous one serves again: $message" ;;
  8) level=error title="$label / BROKEN" text="no healthy generation serves on the host; it needs attention (smoker-install history): $message" ;;
  9) level=error title="$label / host state" text="host state or configuration is missing or inconsistent: $message" ;;
  1) level=error title="$label / ${kind:-runtime}" text="a docker/compose command or a file operation failed on the host: $message" ;;
  255) level=error title="$label / ssh failed" text="ssh to $SSH_TARGET failed (network, key, known_hosts or forced command)" ;;
  *) level=error title="$label / exit $rc" text="smoker-install apply ended with exit status $rc: $message" ;;
esac
echo "::$level title=$title::$(oneline "$text")"
{
  printf '### Deploy to %s: %s\n\n' "$label" "$([ "$rc" -eq 0 ] && echo "${result:-ok}" || echo "failed (${kind:-exit $rc})")"
  printf '| field | value |\n| --- | --- |\n'
  printf '| bundle | `%s` |\n' "$name"
  printf '| exit status | %s |\n' "$rc"
  [ -n "$kind" ] && printf '| kind | `%s` |\n' "$kind"
  [ -n "$profile" ] && printf '| profile | %s |\n' "$profile"
  [ -n "$version" ] && printf '| version | %s |\n' "$version"
  [ -n "$generation" ] && printf '| generation | %s |\n' "$generation"
  [ -n "$health" ] && printf '| health | %s |\n' "$(oneline "$health")"
  [ -n "$message" ] && printf '| message | %s |\n' "$(oneline "$message" | sed 's/|/\\|/g')"
  printf '\n'
} >>"$summary"
exit "$rc"
