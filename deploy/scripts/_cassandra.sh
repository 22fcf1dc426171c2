# shellcheck shell=bash
# Apache Cassandra 5.0 (the CQL stand-in for ScyllaDB) from Maven Central jars on JDK 17:
# one node, loopback only, data in its run dir. Sourced by stack.sh.

CASSANDRA_VERSION="${RECD_CASSANDRA_VERSION:-5.0.9}"
CASSANDRA_HOME="$CACHE_DIR/cassandra-$CASSANDRA_VERSION"
CASSANDRA_MARKER="org.apache.cassandra.service.CassandraDaemon"
CASSANDRA_HEAP="${RECD_CASSANDRA_HEAP:-1g}"

cassandra_install() {
  maven_fetch "$CASSANDRA_HOME/lib" "org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION"
}

# Replace @KEY@ placeholders in a template; values are escaped for sed's replacement side.
render() {
  local template=$1 out=$2 script="" key val; shift 2
  while (($#)); do
    key=$1 val=$2; shift 2
    val=${val//\\/\\\\}; val=${val//|/\\|}; val=${val//&/\\&}
    script+="s|@${key}@|${val}|g;"
  done
  sed "$script" "$template" >"$out"
}

cassandra_start() {
  require_java17
  local dir native storage jamm opts=()
  dir="$(svc_dir cassandra)"
  # RESTART=1 (stack.sh start): the rendered config, hence the ports, and the data are reused.
  if [[ "${RESTART:-0}" != 1 ]]; then
    native=$(free_port)
    storage=$(free_port "$native")
    mkdir -p "$dir/logs"
    render "$DEPLOY_DIR/cassandra/cassandra.yaml.in" "$dir/cassandra.yaml" \
      RUN_DIR "$dir" NATIVE_PORT "$native" STORAGE_PORT "$storage"
    printf '%s' "$native" >"$dir/port"
  fi

  mapfile -t opts < <(grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$DEPLOY_DIR/cassandra/jvm17.options")
  # jamm measures object sizes for memtable accounting; as an agent it avoids a slower fallback.
  jamm=$(compgen -G "$CASSANDRA_HOME/lib/jamm-*.jar" | head -n 1 || true)
  [[ -n "$jamm" ]] && opts+=("-javaagent:$jamm")

  spawn cassandra "$JAVA" \
    -Xms512m "-Xmx$CASSANDRA_HEAP" \
    "${JIT_OPTS[@]}" "${opts[@]}" \
    "-Dcassandra.config=file://$dir/cassandra.yaml" \
    "-Dcassandra.storagedir=$dir" \
    "-Dcassandra.logdir=$dir/logs" \
    "-Dlogback.configurationFile=$DEPLOY_DIR/cassandra/logback.xml" \
    -cp "$CASSANDRA_HOME/lib/*" \
    "$CASSANDRA_MARKER"
}

cassandra_ready() {
  local dir port
  dir="$(svc_dir cassandra)"
  port=$(<"$dir/port")
  tcp_open "$port" || return 1
  if have_drivers; then
    "$PYTHON" "$PROBE" cql "$port" >"$dir/probe.out" 2>&1
  else
    grep -q "Starting listening for CQL clients" "$dir/logs/system.log" 2>/dev/null
  fi
}

cassandra_wait() {
  wait_ready cassandra "$CASSANDRA_MARKER" cassandra_ready "$(svc_dir cassandra)/logs/system.log"
}

cassandra_env() {
  printf 'export RECD_TEST_CASSANDRA_HOSTS=127.0.0.1\n'
  printf 'export RECD_TEST_CASSANDRA_PORT=%s\n' "$(<"$(svc_dir cassandra)/port")"
}
