#!/usr/bin/env bash
# Run the built app's self-test: open the window offscreen, restore the bundled sample with
# a built-in operator, save and reload it. Exit 0 when the bundle works.
#
#   installer/smoke.sh [path/to/built/restorer]   (default: installer/dist/restorer/restorer)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
app="${1:-$here/dist/restorer/restorer}"
if [ ! -x "$app" ]; then
    echo "smoke.sh: no built app at $app; run installer/build.sh first" >&2
    exit 2
fi
# A throwaway HOME: the self-test must not read or write the user's settings or models.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
HOME="$scratch" XDG_CONFIG_HOME="$scratch/.config" RESTORER_HOME="$scratch/store" \
    QT_QPA_PLATFORM=offscreen timeout 300 "$app" --selftest
echo "smoke.sh: the bundle passed --selftest"
