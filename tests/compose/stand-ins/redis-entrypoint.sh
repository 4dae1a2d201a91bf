#!/bin/sh
# The official image builds Redis with protected mode off by default, since it listens on the
# container's network; Debian's keeps it on, and would refuse every other container.
if [ "${1:-}" = redis-server ]; then
  shift
  exec redis-server "$@" --protected-mode no
fi
exec "$@"
