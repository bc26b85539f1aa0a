#!/usr/bin/env bash
# Fresh-machine set-up for Linux and CI, idempotent: system packages (headless EGL; Xvfb for the window tests; no
# ffmpeg: H.264 comes with PyAV), a virtual environment in .venv with the app and its test tools, and the assets (from
# $RETARGET_ASSET_MIRROR, ../shared/assets, or upstream).
set -euo pipefail
cd "$(dirname "$0")/.."

SYSTEM_PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libgl1 xvfb xauth xdotool)
missing=()
for package in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
    echo "error: install these system packages first: ${missing[*]}" >&2
    exit 2
  fi
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  echo "installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test,deca]"

if [ -z "${RETARGET_ASSET_MIRROR:-}" ] && [ -d ../shared/assets ]; then
  export RETARGET_ASSET_MIRROR=../shared/assets
fi
.venv/bin/realtime-retarget --fetch-assets
