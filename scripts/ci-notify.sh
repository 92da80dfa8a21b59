#!/usr/bin/env bash
# Tells the team's webhook that a workflow step failed, in the same payload kinds as
# smoker-install's own notifications (host.toml [[webhook]]): slack, discord or json.
#
#   scripts/ci-notify.sh TEXT
#
# Environment: WEBHOOK_URL (nothing is sent when it is empty: said on stderr), WEBHOOK_KIND
# (slack | discord | json, default json). A webhook that does not answer never fails the job
# beyond this step's own exit status 0: the failure that caused the notice is what matters.
set -euo pipefail
text=${1:?usage: ci-notify.sh TEXT}
url=${WEBHOOK_URL:-}
kind=${WEBHOOK_KIND:-json}
if [ -z "$url" ]; then
  echo "no WEBHOOK_URL configured: nobody is notified of: $text" >&2
  exit 0
fi
payload=$(python3 -c '
import json, sys, os
kind, text = sys.argv[1], sys.argv[2]
run = "{}/{}/actions/runs/{}".format(os.environ.get("GITHUB_SERVER_URL", ""), os.environ.get("GITHUB_REPOSITORY", ""), os.environ.get("GITHUB_RUN_ID", ""))
if kind == "slack":
    body = {"text": text + " " + run}
elif kind == "discord":
    body = {"content": text + " " + run}
elif kind == "json":
    body = {"event": "ci-failed", "message": text, "run": run,
            "workflow": os.environ.get("GITHUB_WORKFLOW", ""), "sha": os.environ.get("GITHUB_SHA", "")}
else:
    sys.exit("WEBHOOK_KIND must be slack, discord or json, not " + kind)
print(json.dumps(body))
' "$kind" "$text")
curl -fsS --max-time 10 -H 'Content-Type: application/json' --data "$payload" "$url" >/dev/null ||
  echo "warning: the webhook did not take the notice (the failure above stands)" >&2
