#!/usr/bin/env bash
# Render a funcnet HTML report in headless Chromium and check the screenshot is not blank.
#
#   scripts/check_report_render.sh RESULTS_DIR OUT.png
#
# Writes RESULTS_DIR/report.html first when it is missing (`funcnet report`). Needs Debian
# `chromium` (apt-get install -y chromium) or $CHROMIUM, and python with numpy + matplotlib
# (the funcnet environment). Exit 0: rendered, and the screenshot has more than one colour.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 RESULTS_DIR OUT.png" >&2
    exit 2
fi
results=$(cd "$1" && pwd)
out=$2
html="$results/report.html"
chromium=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
if [[ -z "$chromium" ]]; then
    echo "check_report_render: chromium not found (apt-get install -y chromium, or set CHROMIUM)" >&2
    exit 3
fi
python=${PYTHON:-python3}
if [[ ! -f "$html" ]]; then
    "$python" -m funcnet report "$results" >/dev/null
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
rm -f "$out"
# --virtual-time-budget lets the page finish layout (big embedded images) before the shot.
timeout 120 "$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --disable-dev-shm-usage \
    --hide-scrollbars --user-data-dir="$profile" --virtual-time-budget=5000 \
    --screenshot="$out" --window-size=1280,4000 "file://$html" >"$profile/chromium.log" 2>&1 || {
    echo "check_report_render: chromium failed:" >&2
    tail -20 "$profile/chromium.log" >&2
    exit 1
}
if [[ ! -s "$out" ]]; then
    echo "check_report_render: no screenshot written" >&2
    tail -20 "$profile/chromium.log" >&2
    exit 1
fi

"$python" - "$out" <<'PY'
import sys

import numpy as np
from matplotlib.image import imread

img = imread(sys.argv[1])
rgb = img[..., :3]
flat = rgb.reshape(-1, 3)
n_colours = len(np.unique((flat[:: max(1, len(flat) // 200000)] * 255).astype(np.uint8), axis=0))
non_white = float((rgb.min(axis=2) < 0.95).mean())
print(f"screenshot {sys.argv[1]}: {img.shape[1]}x{img.shape[0]}, {n_colours} colours, "
      f"{100 * non_white:.1f}% non-white pixels")
if (rgb == rgb.reshape(-1, 3)[0]).all():
    sys.exit("check_report_render: the screenshot is blank (all pixels equal)")
if non_white < 0.01:
    sys.exit("check_report_render: the screenshot is almost blank (< 1% non-white pixels)")
PY
echo "check_report_render: OK"
