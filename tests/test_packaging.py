"""The wheel carries every package and the shipped templates (from the top-level templates/ folder)."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_shipped_templates_live_in_the_top_level_folder_and_builder_links_to_it():
    link = ROOT / "builder" / "templates"
    assert link.is_symlink() and link.resolve() == (ROOT / "templates").resolve()
    assert any((ROOT / "templates").rglob("*.j2"))


@pytest.mark.slow
def test_the_wheel_holds_the_templates_and_every_package(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "--wheel-dir", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = tmp_path.glob("model_bundle_builder-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(ROOT / "templates").as_posix() for p in (ROOT / "templates").rglob("*.j2")}
    assert shipped and {f"builder/templates/{name}" for name in shipped} <= names
    assert "builder/templates/__init__.py" in names and "builder/targets/kserve/inferenceservice.schema.json" in names
    assert "builder/releases/rayjob.schema.json" in names
    demo = {f"builder/data/demo/{p.name}" for p in (ROOT / "builder" / "data" / "demo").iterdir()}
    assert "builder/data/demo/ppyoloe_s_shapes.pth" in demo and demo <= names  # --weights demo, installed
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "builder").rglob("*.py")}
    assert modules <= names
    assert not any(name.startswith(("tests/", "templates/")) for name in names)
