#!/bin/sh
# Starts the three example nodes in the foreground (Ctrl-C stops all).
# Run make-pki.sh first. Usage: run-local.sh [path/to/aquatic]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
aquatic=${1:-$here/../../target/release/aquatic}
cd "$here"
trap 'kill 0' INT TERM EXIT
for node in a b c; do
    "$aquatic" -c "$node.toml" &
done
wait
