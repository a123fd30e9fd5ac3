#!/usr/bin/env bash
# Run the built app's self-test: open the window offscreen, restore the bundled sample with
# a built-in operator, save and reload it, fill a shipped network template and run it; then
# download a random-weight checkpoint of a real catalog network (served on 127.0.0.1 by
# smoke_server.py) through the window's "Download and restore" button, which makes it an ONNX
# model from restorer's template and restores with it. The bundle has no torch. Exit 0 when
# all of it works.
#
#   installer/smoke.sh [path/to/built/restorer]   (default: installer/dist/restorer/restorer)
#   PYTHON=...  the Python that writes and serves the checkpoint (default: .venv/bin/python)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
app="${1:-$here/dist/restorer/restorer}"
python="${PYTHON:-$root/.venv/bin/python}"
model="mirnetv2-sr-x2"
if [ ! -x "$app" ]; then
    echo "smoke.sh: no built app at $app; run installer/build.sh first" >&2
    exit 2
fi
# A throwaway HOME: the self-test must not read or write the user's settings or models.
scratch="$(mktemp -d)"
"$python" "$here/smoke_server.py" "$model" > "$scratch/url" &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$scratch"' EXIT
for _ in $(seq 100); do [ -s "$scratch/url" ] && break; sleep 0.1; done
HOME="$scratch" XDG_CONFIG_HOME="$scratch/.config" RESTORER_HOME="$scratch/store" \
    RESTORER_MIRROR="$(cat "$scratch/url")" QT_QPA_PLATFORM=offscreen \
    timeout 600 "$app" --selftest --selftest-download "$model"
echo "smoke.sh: the bundle passed --selftest (built-in restore, template, download and restore with $model)"
