#!/usr/bin/env bash
# Build the one-folder desktop app into installer/dist/restorer/ (run installer/smoke.sh next).
#
#   installer/build.sh                       uses .venv/bin/python, which must import PyInstaller
#   PYINSTALLER_PATH=/opt/pyi installer/build.sh
#                                            PyInstaller installed elsewhere with
#                                            `pip install --target /opt/pyi pyinstaller`, so the
#                                            app's own environment needs no build tools
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
if [ -n "${PYINSTALLER_PATH:-}" ]; then
    export PYTHONPATH="$PYINSTALLER_PATH${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$python" -c "import PyInstaller" 2>/dev/null; then
    echo "build.sh: PyInstaller is not importable by $python; pip install pyinstaller" \
         "(or set PYINSTALLER_PATH, see the top of this script)" >&2
    exit 2
fi
cd "$root"
start=$(date +%s)
"$python" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$here/dist" --workpath "$here/build" "$here/restorer.spec"
app="$here/dist/restorer"
if [ -e "$app/_internal/torch" ]; then
    echo "build.sh: torch ended up in the bundle; check EXCLUDES in restorer.spec" >&2
    exit 1
fi
echo "build.sh: built $app ($(du -sh "$app" | cut -f1)) in $(( $(date +%s) - start )) s"
