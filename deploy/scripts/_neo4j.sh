# shellcheck shell=bash
# Neo4j 5.26 LTS (Community) embedded in a tiny launcher, deploy/java/Neo4jTestServer.java,
# answering Bolt on 127.0.0.1 with auth off. Jars from Maven Central, JDK 17. Sourced by stack.sh.

NEO4J_VERSION="${RECD_NEO4J_VERSION:-5.26.30}"
NEO4J_HOME="$CACHE_DIR/neo4j-$NEO4J_VERSION"
NEO4J_MARKER="Neo4jTestServer"
NEO4J_HEAP="${RECD_NEO4J_HEAP:-512m}"
NEO4J_SOURCE="$DEPLOY_DIR/java/Neo4jTestServer.java"

# Compile the launcher when its source changed since the last build (checksum, not mtime:
# a fresh checkout has new mtimes but the same source).
neo4j_compile() {
  local sum classes="$NEO4J_HOME/classes"
  sum=$(sha256sum "$NEO4J_SOURCE" | cut -d' ' -f1)
  [[ -f "$classes/.source.sha256" && "$(<"$classes/.source.sha256")" == "$sum" ]] && return 0
  require_java17
  log "compiling $(basename "$NEO4J_SOURCE") against neo4j $NEO4J_VERSION"
  rm -rf "$classes"
  mkdir -p "$classes"
  "$JAVA_HOME/bin/javac" --release 17 -cp "$NEO4J_HOME/lib/*" -d "$classes" "$NEO4J_SOURCE"
  printf '%s' "$sum" >"$classes/.source.sha256"
}

neo4j_install() {
  # org.neo4j:neo4j (Community) already depends on neo4j-bolt, the Bolt server.
  maven_fetch "$NEO4J_HOME/lib" "org.neo4j:neo4j:$NEO4J_VERSION"
  neo4j_compile
}

neo4j_start() {
  require_java17
  local dir port
  dir="$(svc_dir neo4j)"
  # RESTART=1 (stack.sh start): same port, same database directory.
  if [[ "${RESTART:-0}" == 1 ]]; then
    port=$(<"$dir/port")
  else
    port=$(free_port)
    printf '%s' "$port" >"$dir/port"
  fi
  # The --add-opens are those of Neo4j's own server launcher on JDK 17 (page cache and Netty
  # use direct buffers and NIO internals).
  spawn neo4j "$JAVA" \
    -Xms256m "-Xmx$NEO4J_HEAP" "${JIT_OPTS[@]}" \
    -XX:+UseG1GC -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError \
    -Djava.net.preferIPv4Stack=true \
    --add-opens=java.base/java.nio=ALL-UNNAMED \
    --add-opens=java.base/java.io=ALL-UNNAMED \
    --add-opens=java.base/sun.nio.ch=ALL-UNNAMED \
    --add-opens=java.base/java.lang=ALL-UNNAMED \
    -Dio.netty.tryReflectionSetAccessible=true \
    -Djdk.nio.maxCachedBufferSize=1024 \
    -Dlog4j2.disable.jmx=true \
    -cp "$NEO4J_HOME/classes:$NEO4J_HOME/lib/*" \
    "$NEO4J_MARKER" "$port" "$dir/home"
}

neo4j_ready() {
  local dir port
  dir="$(svc_dir neo4j)"
  port=$(<"$dir/port")
  tcp_open "$port" || return 1
  if have_drivers; then
    "$PYTHON" "$PROBE" bolt "$port" >"$dir/probe.out" 2>&1
  else
    grep -q "Neo4jTestServer ready" "$dir/stdout.log"
  fi
}

neo4j_wait() {
  wait_ready neo4j "$NEO4J_MARKER" neo4j_ready "$(svc_dir neo4j)/home/logs/debug.log"
}

neo4j_env() {
  printf 'export RECD_TEST_NEO4J_URI=bolt://127.0.0.1:%s\n' "$(<"$(svc_dir neo4j)/port")"
}
