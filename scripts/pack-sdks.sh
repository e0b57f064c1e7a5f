#!/usr/bin/env bash
# Builds the plugin SDK packages users install: the `evhost` Python wheel and the `evhost`
# npm tarball, into OUT (default: target/sdk-packages). Each is built from a copy of its
# folder with the link to the workspace's wit/ resolved (npm pack leaves links out, and an
# in-tree wheel build would leave build/ behind). PYTHON names the Python to use.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-target/sdk-packages}")
python=${PYTHON:-python3}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out"

cp -rL guest-sdk/python "$stage/python"
rm -rf "$stage/python/tests"
"$python" -m pip wheel --quiet --no-deps --disable-pip-version-check -w "$out" "$stage/python"

cp -rL guest-sdk/js "$stage/js"
(cd "$stage/js" && npm pack --silent --pack-destination "$out" >/dev/null)

ls "$out"
