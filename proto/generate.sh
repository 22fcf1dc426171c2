#!/usr/bin/env bash
# Generates the Python gRPC code for proto/recd/v1 into OUT_DIR (default server/gen).
# grpc_tools writes absolute imports ("from recd.v1 import ..."); they are rewritten to the
# server.gen package so the generated code needs no sys.path tricks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
out="${1:-$root/server/gen}"
python="${PYTHON:-python3}"

mkdir -p "$out/recd/v1"
"$python" -m grpc_tools.protoc -I "$here" \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  "$here"/recd/v1/*.proto
for f in "$out"/recd/v1/*.py "$out"/recd/v1/*.pyi; do
  sed -i -E 's/^from recd\.v1 import /from server.gen.recd.v1 import /' "$f"
done
touch "$out/__init__.py" "$out/recd/__init__.py" "$out/recd/v1/__init__.py"
