#!/usr/bin/env bash
# Makes sure the servers the test suite talks to are up: PostgreSQL (5432),
# Redis (6379) and RabbitMQ (5672) on 127.0.0.1. Starts an installed but
# stopped server; names a missing one and how to get it.
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_up() {
  local port=$1 name=$2 i
  for i in $(seq 1 60); do up "$port" && return 0; sleep 1; done
  echo "error: $name did not come up on 127.0.0.1:$port within 60 s" >&2
  return 1
}

missing=()

if ! up 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    echo "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    wait_up 5432 PostgreSQL || missing+=("PostgreSQL (did not start)")
  else
    missing+=("PostgreSQL: install it (Debian: apt-get install postgresql)")
  fi
fi

if ! up 6379; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    wait_up 6379 Redis || missing+=("Redis (did not start)")
  else
    missing+=("Redis: install it (Debian: apt-get install redis-server)")
  fi
fi

if ! up 5672; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "starting RabbitMQ"
    rabbitmq-server -detached || true
    wait_up 5672 RabbitMQ || missing+=("RabbitMQ (did not start)")
  else
    missing+=("RabbitMQ: install it (Debian: apt-get install rabbitmq-server)")
  fi
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "The test suite needs these servers on 127.0.0.1, and they are missing:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  exit 1
fi
echo "services: PostgreSQL, Redis and RabbitMQ are up"
