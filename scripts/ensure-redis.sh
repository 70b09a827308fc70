#!/usr/bin/env bash
# The tests talk to a real Redis on 127.0.0.1:6379; start one (no persistence) if none answers.
set -euo pipefail
port=${REDIS_PORT:-6379}
answers() { (exec 3<>/dev/tcp/127.0.0.1/"$port" && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
answers && exit 0
if ! command -v redis-server >/dev/null; then
  echo "ensure-redis: installing redis-server with apt-get" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
echo "ensure-redis: starting redis-server on 127.0.0.1:$port" >&2
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir /tmp --logfile /tmp/redis-"$port".log
for _ in $(seq 1 50); do answers && exit 0; sleep 0.1; done
echo "ensure-redis: redis-server did not answer on port $port" >&2
exit 1
