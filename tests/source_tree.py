"""A copy of the files a commit of this working tree would hold, as a fresh clone has them."""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def copy_source_tree(destination: pathlib.Path) -> pathlib.Path:
    """Tracked files, and untracked ones git does not ignore, in this tree's versions; links stay links
    (builder/templates links to the top-level templates/), ignored folders such as bundles/ stay out."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, target = ROOT / name, destination / name
        if not (source.is_symlink() or source.is_file()):
            continue  # deleted in the working tree
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)
    return destination
