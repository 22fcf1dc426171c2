# shellcheck shell=bash
# Helpers shared by stack.sh and the per-server files (_redis.sh, _cassandra.sh, _neo4j.sh).
# Sourced, never run. Every server binds 127.0.0.1 only.

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${RECD_CACHE_DIR:-$HOME/.cache/recd}"
STACK_DIR="${RECD_STACK_DIR:-$CACHE_DIR/stack}"
# Absolute, because the paths end up in server configs read from other working directories.
[[ "$STACK_DIR" == /* ]] || STACK_DIR="$PWD/$STACK_DIR"
# JDK 17 explicitly: a newer JDK may come first on PATH; Cassandra 5.0 supports only JDK 11 and 17.
JAVA_HOME="${RECD_JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}"
export JAVA_HOME
JAVA="$JAVA_HOME/bin/java"
M2_REPO="$CACHE_DIR/m2"
PYTHON="${RECD_PYTHON:-python3}"
PROBE="$DEPLOY_DIR/scripts/_probe.py"
# On 2 cores the C2 compiler's threads starve the JVMs' start-up; C1 alone roughly halves the time
# to ready and is plenty for test traffic. RECD_STACK_FULL_JIT=1 restores C2 (e.g. load tests).
if [[ "${RECD_STACK_FULL_JIT:-0}" == 1 ]]; then JIT_OPTS=(); else JIT_OPTS=(-XX:TieredStopAtLevel=1); fi
# Seconds one server may take to answer its first query before `up` gives up.
START_TIMEOUT="${RECD_STACK_TIMEOUT:-180}"
# Seconds between SIGTERM and SIGKILL on `down`.
STOP_GRACE="${RECD_STACK_STOP_GRACE:-30}"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] error: %s\n' "$*" >&2; exit 1; }

svc_dir() { printf '%s/%s' "$STACK_DIR" "$1"; }

require_java17() {
  [[ -x "$JAVA" ]] || die "JDK 17 not found at $JAVA_HOME (set RECD_JAVA_HOME)"
}

# A free TCP port on 127.0.0.1, taken below the kernel's ephemeral range (32768+) so that no
# outgoing connection is handed the same port later. Ports named as arguments are skipped.
free_port() {
  python3 - "$@" <<'PY'
import random, socket, sys
taken = {int(p) for p in sys.argv[1:]}
for _ in range(200):
    port = random.randrange(20000, 32000)
    if port in taken:
        continue
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    sys.exit(0)
sys.exit("no free port found")
PY
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The server's pid, if its pid file names a live process whose command line carries the marker;
# the marker check keeps a recycled pid from being mistaken for (or killed as) our server.
live_pid() {
  local name=$1 marker=$2 pidfile pid
  pidfile="$(svc_dir "$name")/pid"
  [[ -f "$pidfile" ]] || return 1
  pid=$(<"$pidfile")
  [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker" || return 1
  printf '%s' "$pid"
}

# Run a server in the background, detached into its own session so that a Ctrl-C in the shell
# that ran `up` (or make's process group) does not take it down; `down` stops it by pid.
# The lock fd 9 is closed in the child, or the server would hold the stack lock forever.
spawn() {
  local name=$1; shift
  local dir; dir="$(svc_dir "$name")"
  setsid "$@" >"$dir/stdout.log" 2>&1 </dev/null 9>&- &
  printf '%s' "$!" >"$dir/pid"
}

# Stopping is SIGTERM, then SIGKILL once the grace period is over; split in two steps so that
# `down` can signal every server first and wait for them together.

# Send SIGTERM to a running server and print its pid (nothing if it is not running).
term_server() {
  local name=$1 marker=$2 pid
  pid=$(live_pid "$name" "$marker") || return 0
  log "$name: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  printf '%s' "$pid"
}

# Wait for a signalled server to exit; SIGKILL it at the deadline (a SECONDS value).
await_exit() {
  local name=$1 pid=$2 deadline=$3
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still alive after ${STOP_GRACE}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  log "$name: stopped"
}

kill_server() {
  local pid
  pid=$(term_server "$1" "$2")
  [[ -z "$pid" ]] || await_exit "$1" "$pid" $((SECONDS + STOP_GRACE))
}

# Fresh run dir for a server about to start (the data of a previous run is thrown away).
reset_svc_dir() {
  local dir; dir="$(svc_dir "$1")"
  rm -rf "$dir"
  mkdir -p "$dir"
}

log_tail() {
  local name=$1 f; shift
  for f in "$(svc_dir "$name")/stdout.log" "$@"; do
    [[ -s "$f" ]] || continue
    printf -- '----- %s (last 40 lines) -----\n' "$f" >&2
    tail -n 40 "$f" >&2
  done
}

# Poll `probe` until it succeeds; fail early if the process died, and at START_TIMEOUT.
# On failure print the logs, stop what is left and return non-zero.
wait_ready() {
  local name=$1 marker=$2 probe=$3; shift 3
  local logs=("$@") started=$SECONDS
  while ! "$probe"; do
    if ! live_pid "$name" "$marker" >/dev/null; then
      log "$name: process exited during start-up"
      log_tail "$name" "${logs[@]}"
      return 1
    fi
    if ((SECONDS - started >= START_TIMEOUT)); then
      log "$name: not ready after ${START_TIMEOUT}s"
      log_tail "$name" "${logs[@]}"
      kill_server "$name" "$marker"
      log "$name: logs kept in $(svc_dir "$name") until 'stack.sh down'"
      return 1
    fi
    sleep 0.5
  done
}

# 0: the Python drivers for the probes are importable; otherwise readiness falls back to TCP +
# log lines. Checked once per run (importing cassandra-driver costs about a second).
have_drivers() {
  if [[ -z "${_HAVE_DRIVERS:-}" ]]; then
    if "$PYTHON" -c 'import cassandra.cluster, neo4j' 2>/dev/null; then
      _HAVE_DRIVERS=yes
    else
      _HAVE_DRIVERS=no
      log "note: $PYTHON lacks cassandra-driver/neo4j; readiness = open port + log line"
    fi
  fi
  [[ "$_HAVE_DRIVERS" == yes ]]
}

# Fetch Maven artifacts with their runtime dependencies into LIB_DIR, once. A stamp file marks a
# complete download, so a later run never touches the network; the jars land in a temp dir first
# so an interrupted download is never mistaken for a complete one.
maven_fetch() {
  local lib_dir=$1; shift
  [[ -f "$lib_dir/.complete" ]] && return 0
  command -v mvn >/dev/null || die "mvn not found (apt-get install -y maven)"
  require_java17
  local work deps="" coord g a v
  mkdir -p "$CACHE_DIR"
  work="$(mktemp -d "$CACHE_DIR/.fetch.XXXXXX")"
  for coord in "$@"; do
    IFS=: read -r g a v <<<"$coord"
    deps+="<dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$v</version></dependency>"
  done
  cat >"$work/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>recd.stack</groupId><artifactId>runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>$deps</dependencies>
</project>
EOF
  log "fetching $* from Maven Central (cache: $M2_REPO)"
  # mvn's own output goes to a file, shown only when the download fails.
  if ! (cd "$work" && mvn -q -B -Dstyle.color=never -Dmaven.repo.local="$M2_REPO" \
      org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$work/lib") >"$work/mvn.log" 2>&1; then
    tail -n 40 "$work/mvn.log" >&2
    rm -rf "$work"
    die "maven download of $* failed"
  fi
  rm -rf "$lib_dir"
  mkdir -p "$(dirname "$lib_dir")"
  # Same file system (both under CACHE_DIR), so this rename is atomic.
  mv "$work/lib" "$lib_dir"
  rm -rf "$work"
  touch "$lib_dir/.complete"
}
