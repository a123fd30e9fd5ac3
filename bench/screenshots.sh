#!/usr/bin/env bash
# Screenshots of the app under Xvfb at 1280x800 and 1920x1080 into docs/screenshots/.
# Needs: apt-get install -y xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-image0 \
#        libxcb-render-util0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
for size in 1280x800 1920x1080; do
    extra=""
    [ "$size" = 1280x800 ] && extra="--all"
    OMP_NUM_THREADS=1 QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 ${size}x24" \
        "$python" bench/screenshots.py --size "$size" --out docs/screenshots $extra
done
