#!/bin/sh
# A batch-job recipe (Slurm, PBS, … alike): register, start the server, confirm, heartbeat,
# unregister at the end. Submit it like any job script; `broker` must be on PATH and the user's
# credentials discoverable (~/.config/broker/credentials.json).
#
#SBATCH --job-name=echo
#SBATCH --time=01:00:00
set -eu
NAME=${1:-jobecho}

# BROKER_PORT, BROKER_HOST, BROKER_SERVICE and BROKER_TOKEN (the *service* token) for this job.
eval "$(broker register "$NAME" --tunnel none --ttl 2h --format env)"
trap 'broker unregister "$BROKER_SERVICE" >/dev/null 2>&1 || true' EXIT INT TERM

python3 "$(dirname "$0")/gated_echo.py" &
SERVER=$!

# Ready once the server listens; the broker checks the port itself.
until broker ready "$BROKER_SERVICE" >/dev/null 2>&1; do
  kill -0 "$SERVER" 2>/dev/null || exit 1
  sleep 0.2
done
echo "job: $BROKER_SERVICE ready on $BROKER_HOST:$BROKER_PORT"

# Heartbeats keep the lease while the job runs.
while kill -0 "$SERVER" 2>/dev/null; do
  broker heartbeat "$BROKER_SERVICE" >/dev/null 2>&1 || true
  sleep 30 &
  wait $! || true
done
