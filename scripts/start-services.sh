#!/usr/bin/env bash
# Starts the long-running services the tests talk to when they are not already answering.
# RabbitMQ runs at 127.0.0.1:5672 on the project's machines; on a plain machine we start it.
set -euo pipefail
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "starting RabbitMQ"
    rabbitmq-server -detached || true
    for _ in $(seq 1 60); do port_open 5672 && break; sleep 1; done
    port_open 5672 || echo "warning: RabbitMQ did not come up on 127.0.0.1:5672; broker tests will fail" >&2
  else
    echo "warning: rabbitmq-server is not installed; broker tests will fail" >&2
  fi
fi
