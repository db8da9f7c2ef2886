"""Deploy the replay app as a Hugging Face Space (Gradio SDK).

    python scripts/deploy_space.py --repo_id <user>/fasvla-rollouts            # needs `hf auth login`
    python scripts/deploy_space.py --repo_id <user>/fasvla-rollouts --rollouts <user>/<rollouts dataset>
    python scripts/deploy_space.py --stage_only outputs/space                  # write the Space's files, no upload

The Space gets what replaying needs and nothing else (no torch, no simulator): app.py, the app's package, the
dataset reader, the example rollouts, space/README.md (the Space card: sdk gradio, app_file app.py) as README.md and
space/requirements.txt as requirements.txt. `--rollouts` sets the Space variable FASVLA_ROLLOUTS, the rollout
sources the app opens on.
"""

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ["app.py", "fasvla/__init__.py", "fasvla/app", "fasvla/data/__init__.py", "fasvla/data/lerobot_dataset.py",
         "fasvla/data/video.py", "fasvla/libero/__init__.py", "fasvla/libero/env.py",
         "fasvla/libero/perturbations.py", "examples/libero_rollouts"]
RENAMED = {"space/README.md": "README.md", "space/requirements.txt": "requirements.txt"}


def stage(folder: Path) -> Path:
    """The Space's files in `folder` (emptied first)."""
    shutil.rmtree(folder, ignore_errors=True)
    for name in FILES:
        source, target = ROOT / name, folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    for name, target in RENAMED.items():
        shutil.copy2(ROOT / name, folder / target)
    return folder


def deploy(folder: Path, repo_id: str, rollouts: list[str], private: bool) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    if rollouts:
        api.add_space_variable(repo_id, "FASVLA_ROLLOUTS", " ".join(rollouts))
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="space",
                      commit_message="Deploy the FAS-VLA replay app")
    return f"https://huggingface.co/spaces/{repo_id}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo_id", help="the Space, <user or org>/<name>")
    p.add_argument("--rollouts", nargs="*", default=[], help="Hub dataset ids of rollouts to show")
    p.add_argument("--private", action="store_true")
    p.add_argument("--stage_only", metavar="DIR", default=None, help="only write the Space's files into DIR")
    args = p.parse_args(argv)
    if args.stage_only is None and args.repo_id is None:
        p.error("--repo_id is required unless --stage_only is given")
    folder = stage(Path(args.stage_only or ROOT / "outputs" / "space"))
    print(f"staged the Space in {folder}")
    if args.stage_only is None:
        print(f"deployed: {deploy(folder, args.repo_id, args.rollouts, args.private)}")


if __name__ == "__main__":
    sys.exit(main())
