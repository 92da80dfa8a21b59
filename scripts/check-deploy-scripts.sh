#!/usr/bin/env bash
# Checks the scripts the deploy workflows run and the cloud hosts' forced command:
# - ShellCheck over them;
# - deploy/cloud/smoker-deploy allows exactly `receive NAME`, `apply NAME` and `status`, and
#   refuses other commands, path tricks, shell syntax and patterns (run against a stand-in
#   installer in a scratch directory);
# - scripts/remote-apply.sh turns every exit status smoker-install documents (`--help`: one
#   per error kind) into an error annotation and a job summary, and passes the status on
#   (run against a stand-in `ssh` that answers as the host would).
set -euo pipefail
cd "$(dirname "$0")/.."
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v shellcheck >/dev/null || die "shellcheck is missing (Debian package shellcheck; scripts/ci-tools.sh installs it)"
shellcheck deploy/cloud/smoker-deploy scripts/remote-apply.sh scripts/ci-notify.sh \
  scripts/check-deploy-scripts.sh scripts/check-deb.sh deploy/debian/maintainer-scripts/* ||
  die "shellcheck found problems"

t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT

# --- the forced command -----------------------------------------------------------------
printf '#!/bin/sh\necho "installer $*"\nexit 7\n' >"$t/installer"
chmod 755 "$t/installer"
sed "s|^DIR=.*|DIR=$t/incoming|" deploy/cloud/smoker-deploy >"$t/smoker-deploy"
chmod 755 "$t/smoker-deploy"
wrap() { (cd "$t" && SSH_ORIGINAL_COMMAND="$1" SMOKER_DEPLOY_INSTALLER="$t/installer" ./smoker-deploy); }
echo bundle-bytes | wrap "receive svc-1.0.0-amd64.tar.zst" 2>/dev/null
[ "$(cat "$t/incoming/svc-1.0.0-amd64.tar.zst")" = bundle-bytes ] || die "smoker-deploy receive did not store the bundle"
[ "$(stat -c %a "$t/incoming")" = 700 ] || die "smoker-deploy: the incoming directory is not 0700"
rc=0; out=$(wrap "apply svc-1.0.0-amd64.tar.zst") || rc=$?
[ "$rc" = 7 ] || die "smoker-deploy apply did not pass the installer's exit status on (got $rc)"
[ "$out" = "installer --json apply --wait $t/incoming/svc-1.0.0-amd64.tar.zst" ] || die "smoker-deploy apply ran: $out"
[ ! -e "$t/incoming/svc-1.0.0-amd64.tar.zst" ] || die "smoker-deploy apply left the bundle behind"
rc=0; out=$(wrap status) || rc=$?
[ "$out" = "installer --json status" ] || die "smoker-deploy status ran: $out"
touch "$t/x.tar.zst"
# shellcheck disable=SC2016 # '$(id)' is meant literally: the wrapper must not run it
for bad in "" "sh" "apply" "apply ../etc/passwd.tar.zst" "apply /etc/x.tar.zst" "apply *.tar.zst" \
  "receive a.tar.zst;id" "receive .hidden.tar.zst" "apply a.tar.zst --allow-downgrade" \
  'status $(id)' "status extra" "apply x.txt" "rollback"; do
  rc=0; wrap "$bad" </dev/null >/dev/null 2>&1 || rc=$?
  [ "$rc" = 2 ] || die "smoker-deploy did not refuse '$bad' (exit status $rc)"
done

# --- exit statuses to annotations ---------------------------------------------------------
cargo build --quiet --locked --bin smoker-install
codes=$(target/debug/smoker-install --help | sed -n 's/^ *\([0-9]\) .*/\1/p' | sort -u)
[ -n "$codes" ] || die "smoker-install --help lists no exit statuses"
echo x >"$t/svc-2.0.0-amd64.tar.zst"
for code in $codes 255; do
  cat >"$t/ssh" <<SSH
#!/bin/sh
case "\$*" in *receive*) cat >/dev/null; exit 0 ;; esac
echo '{"ok":false,"command":"apply","kind":"k$code","exit_code":$code,"message":"what went wrong $code","data":null}'
exit $code
SSH
  chmod 755 "$t/ssh"
  : >"$t/summary"
  rc=0
  out=$(PATH="$t:$PATH" SSH_TARGET=deploy@host SSH_KEY=k KNOWN_HOSTS=kh DEPLOY_LABEL=staging \
    ATTEMPTS=2 PAUSE_SECONDS=0 GITHUB_STEP_SUMMARY="$t/summary" scripts/remote-apply.sh "$t/svc-2.0.0-amd64.tar.zst") || rc=$?
  want=$code
  [ "$code" = 0 ] && continue
  [ "$rc" = "$want" ] || die "remote-apply.sh: exit status $code came back as $rc"
  grep -q "^::error title=staging / " <<<"$out" || die "remote-apply.sh: no error annotation for exit status $code: $out"
  grep -q "^### Deploy to staging: failed" "$t/summary" || die "remote-apply.sh: no job summary for exit status $code"
done
echo "deploy scripts OK: smoker-deploy, remote-apply.sh (exit statuses $(echo "$codes" | tr '\n' ' ')255), ci-notify.sh"
