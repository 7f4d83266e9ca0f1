#!/bin/sh
# Every container of the stack starts through this: it refuses to run with a secret still set to
# the placeholder of docker/.env.example ("change-me..."), naming the variable, then runs the command.
bad=$(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=change-me.*/\1/p' | sort | paste -sd, - | sed 's/,/, /g')
if [ -n "$bad" ]; then
  echo "error: $bad: still the change-me placeholder of docker/.env.example; set a real secret in docker/.env" >&2
  exit 2
fi
exec "$@"
