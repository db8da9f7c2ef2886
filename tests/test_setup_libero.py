"""scripts/setup_libero.sh against what users have on their machines: a LIBERO config left by another environment is
replaced by this installation's (the old one kept), and a missing config is named, never asked for on a terminal."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fasvla.libero.env import prepare_rendering

ROOT = Path(__file__).resolve().parents[1]
STALE = "benchmark_root: /nonexistent/libero/libero\nbddl_files: /nonexistent/libero/libero/bddl_files\n" \
        "init_states: /nonexistent/libero/libero/init_files\n"


def _setup(config_dir: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "LIBERO_CONFIG_PATH": str(config_dir), "MUJOCO_GL": "egl"}
    return subprocess.run(["bash", str(ROOT / "scripts/setup_libero.sh"), sys.executable], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_config_of_another_installation_is_replaced_and_kept_aside(tmp_path):
    (tmp_path / "config.yaml").write_text(STALE)
    first = _setup(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "pointed at another installation; replaced" in first.stdout
    assert "LIBERO ready" in first.stdout  # an environment built and rendered from this installation's files
    import libero.libero

    config = (tmp_path / "config.yaml").read_text()
    assert f"bddl_files: {Path(libero.libero.__file__).parent}/bddl_files" in config and "/nonexistent" not in config
    backups = list(tmp_path.glob("config.yaml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == STALE
    again = _setup(tmp_path)  # nothing to fix the second time
    assert "already points at this installation" in again.stdout and len(list(tmp_path.glob("*.bak-*"))) == 1


def test_a_missing_config_is_named_with_the_command_that_writes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LIBERO_CONFIG_PATH", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"nowhere/config.yaml is missing: run scripts/setup_libero.sh"):
        prepare_rendering()
