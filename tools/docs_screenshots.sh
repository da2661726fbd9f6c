#!/usr/bin/env bash
# Build the documentation site and take a screenshot of some of its pages in headless
# Chromium (Debian: apt-get install chromium), to look at them as a reader does: the
# pages, the plots and the API reference. Usage, from the repository root:
#   tools/docs_screenshots.sh [OUT_DIR] [PAGE ...]     (pages as site paths: results/ api/neuron/)
set -euo pipefail
out=${1:-/tmp/hnn-bridge-docs-shots}
shift || true
pages=("${@:-}")
[ -n "${pages[0]}" ] || pages=("" results/ api/ api/neuron/ tutorials/where-to-split/ performance/)
site=$(mktemp -d)
.venv/bin/mkdocs build -q --strict -d "$site"
mkdir -p "$out"
port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
(cd "$site" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
server=$!
trap 'kill $server; rm -rf "$site"' EXIT
sleep 1
for page in "${pages[@]}"; do
  name=$(echo "${page:-index}" | tr '/' '_' | sed 's/_$//')
  profile=$(mktemp -d)
  # the flags keep Chromium off the network (this machine has none) and out of a sandbox
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size=1280,4000 \
    --virtual-time-budget=5000 --screenshot="$out/$name.png" "http://127.0.0.1:$port/$page" 2>/dev/null
  rm -rf "$profile"
  echo "$out/$name.png"
done
