"""One readiness probe of a test server through its real client driver.

    python _probe.py cql PORT     SELECT release_version FROM system.local
    python _probe.py bolt PORT    RETURN 1

Exit 0 and print the answer when the server served the query, 1 when it did not (yet), 3 when
the driver is not installed. Used by deploy/scripts/stack.sh, which retries until a deadline.
"""

from __future__ import annotations

import logging
import sys

HOST = "127.0.0.1"
TIMEOUT_S = 5.0


def probe_cql(port: int) -> str:
    from cassandra.cluster import Cluster

    cluster = Cluster(
        [HOST],
        port=port,
        connect_timeout=TIMEOUT_S,
        control_connection_timeout=TIMEOUT_S,
    )
    try:
        session = cluster.connect()
        row = session.execute("SELECT release_version FROM system.local", timeout=TIMEOUT_S).one()
        return f"cassandra {row.release_version}"
    finally:
        cluster.shutdown()


def probe_bolt(port: int) -> str:
    from neo4j import GraphDatabase

    with GraphDatabase.driver(f"bolt://{HOST}:{port}", auth=None, connection_timeout=TIMEOUT_S) as driver:
        records, _, _ = driver.execute_query("RETURN 1 AS one")
        info = driver.get_server_info()
        return f"{info.agent} answered RETURN 1 = {records[0]['one']}"


PROBES = {"cql": probe_cql, "bolt": probe_bolt}


def main() -> int:
    kind, port = sys.argv[1], int(sys.argv[2])
    # The drivers log every refused connection while the server is still starting.
    logging.disable(logging.CRITICAL)
    try:
        print(PROBES[kind](port))
    except ImportError as exc:
        print(f"driver missing: {exc}", file=sys.stderr)
        return 3
    except Exception as exc:  # any failure just means "not ready yet"
        print(f"not ready: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
