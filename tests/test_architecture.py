"""The layers of docs/ARCHITECTURE.md hold (import-linter, function-level imports included), and the
registries are what the document says: one module or folder plus one line per family, flavour or target."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [contract] = config["contracts"]
    return contract


def test_the_layers_contract_is_kept():
    linter = pathlib.Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(linter), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def test_the_contract_covers_every_package_and_top_level_module():
    named = {name.strip() for layer in _contract()["layers"] for name in layer.split("|")}
    packages = {"builder." + p.parent.relative_to(ROOT / "builder").parts[0]
                for p in (ROOT / "builder").glob("*/__init__.py")}
    modules = {f"builder.{p.stem}" for p in (ROOT / "builder").glob("*.py") if p.stem != "__init__"}
    assert packages | modules == named


def test_every_layer_is_a_real_package_and_the_order_matches_the_document():
    layers = [[n.strip() for n in layer.split("|")] for layer in _contract()["layers"]]
    document = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    positions = [min(document.index(f"`{name}`") for name in layer) for layer in layers]
    assert positions == sorted(positions), "docs/ARCHITECTURE.md lists the layers in another order"


def test_registries_name_modules_that_exist():
    from builder.exporting.nms import FLAVOUR_MODULES, flavour
    from builder.models.registry import FAMILY_MODULES, families
    from builder.targets import TARGET_MODULES, target_class
    from builder.targets.render import SHIPPED

    assert len(families()) == len(FAMILY_MODULES)
    for name in FLAVOUR_MODULES:
        assert flavour(name).name == name
    for name in TARGET_MODULES:
        target = target_class(name)
        assert target.name == name
        assert (SHIPPED / name).is_dir(), f"target {name} has no templates/{name}/ folder"


def test_each_decision_is_asked_of_an_object_not_compared_as_a_string():
    """`engine` once steered five decisions through 11 string comparisons; none may come back."""
    import re

    offenders = []
    for path in (ROOT / "builder").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"""\b(engine|runtime|nms)\s*[!=]=\s*["'](tensorrt|onnxruntime|onnx)["']""", line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
