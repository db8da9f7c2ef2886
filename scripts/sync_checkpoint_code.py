"""Copy the repository's remote-code files into the shipped checkpoints (checkpoints/*/), as real files.

    python scripts/sync_checkpoint_code.py            # after a change to the remote code
    python scripts/sync_checkpoint_code.py FOLDER...  # a saved model kept without its code (results/*/models)

A checkpoint published on the Hub must hold its code as files (a link would arrive as a path, not as code), and
the shipped checkpoints are published with the repository. Two copies can drift, so tests/test_shipped_checkpoint.py
checks that they equal the root files and that the current code still reproduces each checkpoint's recorded outputs
(tests/fixtures/checkpoint_outputs): sync once that test says the change leaves what they do as it was.
"""

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REMOTE_CODE = ["configuration_fasvla.py", "modeling_fasvla.py", "processing_fasvla.py", "flow_fasvla.py",
               "streaming_fasvla.py", "normalization_fasvla.py", "static_step_fasvla.py"]


def checkpoint_folders() -> list[Path]:
    return sorted(path.parent for path in (ROOT / "checkpoints").glob("*/config.json"))


def sync(folder: Path) -> list[str]:
    """The remote-code files of `folder` replaced by the root's; returns the names that changed."""
    changed = []
    for name in REMOTE_CODE:
        target = folder / name
        if target.is_symlink() or not target.is_file() or target.read_bytes() != (ROOT / name).read_bytes():
            target.unlink(missing_ok=True)
            shutil.copy2(ROOT / name, target)
            changed.append(name)
    return changed


def main(argv=None) -> int:
    folders = [Path(name).resolve() for name in (sys.argv[1:] if argv is None else argv)] or checkpoint_folders()
    for folder in folders:
        if not (folder / "config.json").is_file():
            raise ValueError(f"folder {folder} holds no saved model (config.json)")
        changed = sync(folder)
        print(f"{folder}: {', '.join(changed) if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
