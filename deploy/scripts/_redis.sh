# shellcheck shell=bash
# Redis 7 from Debian's packages: in-memory only, loopback only, run in the foreground under
# stack.sh's own process management. Sourced by stack.sh.

# Redis rewrites its argv to "redis-server 127.0.0.1:PORT" once up, so match the name alone.
REDIS_MARKER="redis-server"

redis_install() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
  local sudo=()
  [[ $EUID -eq 0 ]] || sudo=(sudo)
  log "installing redis-server from Debian packages"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq redis-server >/dev/null
}

redis_start() {
  local dir port
  dir="$(svc_dir redis)"
  if [[ "${RESTART:-0}" == 1 ]]; then
    spawn redis redis-server "$dir/redis.conf"   # same port; no data to keep (a cache restarts empty)
    return
  fi
  port=$(free_port)
  # No persistence (save "", no AOF): the tests own the data and throw it away.
  # allkeys-lru under a cap, as a cache should behave when full.
  cat >"$dir/redis.conf" <<CONF
bind 127.0.0.1
protected-mode yes
port $port
daemonize no
supervised no
dir $dir
logfile ""
save ""
appendonly no
maxmemory 256mb
maxmemory-policy allkeys-lru
CONF
  printf '%s' "$port" >"$dir/port"
  spawn redis redis-server "$dir/redis.conf"
}

redis_ready() {
  local port
  port=$(<"$(svc_dir redis)/port")
  [[ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == PONG ]]
}

redis_wait() { wait_ready redis "$REDIS_MARKER" redis_ready; }

redis_env() {
  printf 'export RECD_TEST_REDIS_URL=redis://127.0.0.1:%s/0\n' "$(<"$(svc_dir redis)/port")"
}
