#!/usr/bin/env bash
# Real backend servers on 127.0.0.1 for the tests and for developers: Redis, Cassandra, Neo4j.
#
#   stack.sh install [SERVER...]   download/compile only, start nothing (so `make test` can prefetch)
#   stack.sh up      [SERVER...]   start (or reuse, if healthy) and wait until each answers a query;
#                                  prints the `export` lines of `env` on stdout
#   stack.sh env     [SERVER...]   print `export RECD_TEST_...` lines for the running servers
#   stack.sh status  [SERVER...]   one line per server
#   stack.sh down    [SERVER...]   stop (TERM, then KILL) and delete run dirs
#   stack.sh stop    [SERVER...]   stop (TERM, then KILL), keeping port and data for `start`
#   stack.sh start   [SERVER...]   restart stopped servers on their old ports with their data; wait
#   stack.sh recd-env [SERVER...]  `export RECD_...` lines pointing recd's config at the servers
#
# SERVER is redis, cassandra or neo4j; none means all three. See deploy/scripts/README.md.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_common.sh
source "$SCRIPTS_DIR/_common.sh"
# shellcheck source=_redis.sh
source "$SCRIPTS_DIR/_redis.sh"
# shellcheck source=_cassandra.sh
source "$SCRIPTS_DIR/_cassandra.sh"
# shellcheck source=_neo4j.sh
source "$SCRIPTS_DIR/_neo4j.sh"

ALL_SERVERS=(redis cassandra neo4j)

usage() {
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Fill the global SERVERS from the arguments (default: all), rejecting unknown names.
select_servers() {
  SERVERS=("$@")
  ((${#SERVERS[@]})) || SERVERS=("${ALL_SERVERS[@]}")
  local s
  for s in "${SERVERS[@]}"; do
    [[ " ${ALL_SERVERS[*]} " == *" $s "* ]] || die "unknown server '$s' (expected: ${ALL_SERVERS[*]})"
  done
}

marker_of() {
  case $1 in
    redis) printf '%s' "$REDIS_MARKER" ;;
    cassandra) printf '%s' "$CASSANDRA_MARKER" ;;
    neo4j) printf '%s' "$NEO4J_MARKER" ;;
  esac
}

is_running() { live_pid "$1" "$(marker_of "$1")" >/dev/null; }

# Serialise up/down between concurrent callers (two test runs sharing one stack dir).
take_lock() {
  mkdir -p "$STACK_DIR"
  command -v flock >/dev/null || return 0
  exec 9>"$STACK_DIR/.lock"
  flock -w 600 9 || die "another stack.sh holds $STACK_DIR/.lock"
}

now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

cmd_install() {
  select_servers "$@"
  local s t
  for s in "${SERVERS[@]}"; do
    t=$(now)
    "${s}_install"
    log "$s: installed ($(since "$t")s)"
  done
}

cmd_up() {
  select_servers "$@"
  take_lock
  local s t0 failed=0 starting=()
  for s in "${SERVERS[@]}"; do "${s}_install"; done
  t0=$(now)
  # Start every server before waiting on any: the JVMs warm up side by side.
  for s in "${SERVERS[@]}"; do
    if is_running "$s" && "${s}_ready"; then
      log "$s: already running and healthy (port $(<"$(svc_dir "$s")/port")), reusing it"
      continue
    fi
    kill_server "$s" "$(marker_of "$s")"   # a live but unhealthy leftover
    reset_svc_dir "$s"
    "${s}_start"
    log "$s: starting on port $(<"$(svc_dir "$s")/port") (pid $(<"$(svc_dir "$s")/pid"))"
    starting+=("$s")
  done
  for s in "${starting[@]}"; do
    if "${s}_wait"; then
      log "$s: ready after $(since "$t0")s"
    else
      failed=1
    fi
  done
  ((failed == 0)) || die "some servers did not start; see the logs above ('stack.sh down' cleans up)"
  cmd_env "${SERVERS[@]}"
}

cmd_env() {
  select_servers "$@"
  local s missing=0
  for s in "${SERVERS[@]}"; do
    if is_running "$s"; then
      "${s}_env"
    else
      log "$s: not running"; missing=1
    fi
  done
  return "$missing"
}

cmd_status() {
  select_servers "$@"
  local s
  for s in "${SERVERS[@]}"; do
    if is_running "$s"; then
      printf '%-10s running  pid %-8s port %s  dir %s\n' "$s" \
        "$(<"$(svc_dir "$s")/pid")" "$(<"$(svc_dir "$s")/port")" "$(svc_dir "$s")"
    else
      printf '%-10s stopped\n' "$s"
    fi
  done
}

cmd_down() {
  select_servers "$@"
  take_lock
  local i t0 deadline pids=()
  t0=$(now)
  # Signal all first, then wait: the JVMs shut down side by side.
  for i in "${!SERVERS[@]}"; do
    pids[i]=$(term_server "${SERVERS[i]}" "$(marker_of "${SERVERS[i]}")")
  done
  deadline=$((SECONDS + STOP_GRACE))
  for i in "${!SERVERS[@]}"; do
    [[ -z "${pids[i]}" ]] || await_exit "${SERVERS[i]}" "${pids[i]}" "$deadline"
    rm -rf "$(svc_dir "${SERVERS[i]}")"
  done
  log "down: ${SERVERS[*]} in $(since "$t0")s"
}

# Stop servers as an operator would (SIGTERM, SIGKILL after the grace period), keeping the run dir
# (port, config, data) for `start`: clients see closed connections and refused reconnects. Not SIGKILL:
# the test Cassandra keeps its system tables, schema included, in memory (cassandra.unsafesystem, for
# fast DDL) and writes them out only on a clean shutdown; a killed one would forget recent keyspaces.
cmd_stop() {
  select_servers "$@"
  take_lock
  local s
  for s in "${SERVERS[@]}"; do
    if is_running "$s"; then
      kill_server "$s" "$(marker_of "$s")"
    else
      log "$s: not running"
    fi
  done
}

# Restart servers that `stop` killed, on the same ports with the same data (as a restarted server
# would come back), and wait until each answers its query.
cmd_start() {
  select_servers "$@"
  take_lock
  local s t0 failed=0 starting=()
  t0=$(now)
  for s in "${SERVERS[@]}"; do
    if is_running "$s"; then
      log "$s: already running"
      continue
    fi
    [[ -f "$(svc_dir "$s")/port" ]] || die "$s: no run dir to restart from; use 'up'"
    RESTART=1 "${s}_start"
    log "$s: restarting on port $(<"$(svc_dir "$s")/port") (pid $(<"$(svc_dir "$s")/pid"))"
    starting+=("$s")
  done
  for s in "${starting[@]}"; do
    if "${s}_wait"; then log "$s: ready after $(since "$t0")s"; else failed=1; fi
  done
  ((failed == 0)) || die "some servers did not restart; see the logs above"
}

# recd's own config keys (RECD_<SECTION>__<KEY>) for the running servers, so that
# `recd serve --config deploy/config/real.yaml` talks to them. Kept apart from `env`: exported in a
# test shell, they would change the defaults that config tests check.
cmd_recd_env() {
  select_servers "$@"
  local s port
  for s in "${SERVERS[@]}"; do
    is_running "$s" || { log "$s: not running"; continue; }
    port=$(<"$(svc_dir "$s")/port")
    case $s in
      redis) printf 'export RECD_CACHE__URL=redis://127.0.0.1:%s/0\n' "$port" ;;
      cassandra) printf 'export RECD_PROFILES__HOSTS="[127.0.0.1]"\nexport RECD_PROFILES__PORT=%s\n' "$port" ;;
      neo4j) printf 'export RECD_GRAPH__URI=bolt://127.0.0.1:%s\n' "$port" ;;
    esac
  done
}

main() {
  (($#)) || usage
  local cmd=$1; shift
  case $cmd in
    install | up | env | status | down | stop | start) "cmd_$cmd" "$@" ;;
    recd-env) cmd_recd_env "$@" ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
}

main "$@"
