"""Remove what DVC keeps of arms that are no longer in params.yaml.

When an arm leaves params.yaml, its stage leaves dvc.yaml, but DVC deletes
neither the stage's entry in dvc.lock nor its outputs. The stale entry would
stay in git, and the stale files would stay in outputs/steps and metrics, two
folders that the plots stage hashes whole: dvc.lock would then differ from
that of a workspace that never had the arm. `make repro` runs this module
before `dvc repro`.
"""

import argparse
import logging
from pathlib import Path

from ruamel.yaml import YAML

from pipeline.cli import run_stage
from pipeline.params import load_params

log = logging.getLogger("pipeline.stale_arms")

TRAIN_STAGE_PREFIX = "train@"


def stale_arms(lock: dict, arms: set[str]) -> list[str]:
    """Return the arms that have a train stage in `lock` but not in `arms`."""
    stages = lock.get("stages") or {}
    return [
        name.removeprefix(TRAIN_STAGE_PREFIX)
        for name in stages
        if name.startswith(TRAIN_STAGE_PREFIX) and name.removeprefix(TRAIN_STAGE_PREFIX) not in arms
    ]


def remove_stale_arms(root: Path, params_path: Path) -> list[str]:
    """Delete the dvc.lock entries and outputs of arms not in `params_path`; return their names."""
    lock_path = root / "dvc.lock"
    if not lock_path.exists():
        return []
    arms = set(load_params(params_path).arms)
    lock_yaml = _round_trip_yaml()
    lock = lock_yaml.load(lock_path)
    stale = stale_arms(lock, arms)
    for arm in stale:
        entry = lock["stages"].pop(TRAIN_STAGE_PREFIX + arm)
        removed = [path for path in _output_paths(root, entry) if _remove(path)]
        log.info(
            "arm %s is no longer in %s: removed its dvc.lock entry and %s",
            arm, params_path, ", ".join(str(path.relative_to(root)) for path in removed) or "no files",
        )
    if stale:
        lock_yaml.dump(lock, lock_path)
    return stale


def _round_trip_yaml() -> YAML:
    # DVC writes dvc.lock with ruamel.yaml's round-trip mode in block style;
    # writing it the same way changes only the removed lines. The round-trip
    # loader, like a safe one, builds only plain YAML types.
    lock_yaml = YAML(typ="rt")
    lock_yaml.default_flow_style = False
    return lock_yaml


def _output_paths(root: Path, entry: dict) -> list[Path]:
    """Return the entry's output paths inside `root`; only a hand-edited dvc.lock could list others."""
    resolved_root = root.resolve()
    paths = [root / out["path"] for out in entry.get("outs") or [] if isinstance(out, dict) and "path" in out]
    inside = []
    for path in paths:
        resolved = path.resolve()
        if resolved != resolved_root and resolved.is_relative_to(resolved_root):
            inside.append(path)
    return inside


def _remove(path: Path) -> bool:
    if not path.is_file() and not path.is_symlink():
        return False
    path.unlink()
    _forget_in_gitignore(path)
    return True


def _forget_in_gitignore(path: Path) -> None:
    # DVC adds "/<name>" to the .gitignore beside each cached output it writes.
    gitignore = path.parent / ".gitignore"
    if not gitignore.is_file():
        return
    lines = gitignore.read_text(encoding="utf-8").splitlines(keepends=True)
    remaining_lines = [line for line in lines if line.rstrip("\n") != f"/{path.name}"]
    if len(remaining_lines) != len(lines):
        gitignore.write_text("".join(remaining_lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", type=Path, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    remove_stale_arms(Path.cwd(), args.params)


if __name__ == "__main__":
    run_stage(main)
