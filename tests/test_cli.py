"""The command line: instant help without torch, the model table, and one-line user errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_zoo import TRAINING_FORM_PARAMETERS

NO_TORCH = ("import sys\n"
            "from builder.cli import main\n"
            "code = main(sys.argv[1:])\n"
            "heavy = [m for m in ('torch', 'numpy', 'onnx', 'onnxruntime', 'PIL') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "sys.exit(code)\n")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["models", "--help"], ["fetch", "--help"]])
def test_help_and_version_answer_without_importing_torch(args):
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_version_names_the_package_version():
    from importlib.metadata import version

    assert _run("--version").stdout.strip() == f"builder, version {version('model-bundle-builder')}"


def test_models_table_lists_the_seven_variants_with_exact_counts():
    proc = _run("models")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "family", "parameters"]
    for variant, count in TRAINING_FORM_PARAMETERS.items():
        [row] = [line for line in lines if line.split()[0] == variant]
        assert f"{count:,}" in row and "640x640" in row


def test_models_json_is_machine_readable():
    rows = json.loads(_run("models", "--json").stdout)
    assert {r["name"]: r["parameters"] for r in rows} == TRAINING_FORM_PARAMETERS
    yolo = next(r for r in rows if r["name"] == "yolo_nas_s")
    assert (yolo["confidence_threshold"], yolo["nms_threshold"], yolo["input_size"]) == (0.25, 0.7, [640, 640])


@pytest.mark.parametrize("args, message", [
    (["modls"], "error: No such command 'modls'. Did you mean 'models'?"),
    (["fetch", "--model", "yolo_nas_x", "--weights", "coco"], "error: unknown model 'yolo_nas_x' (did you mean"),
    (["fetch", "--model", "yolo_nas_s", "--weights", "/no/such.pth"], "error: weights '/no/such.pth' are neither"),
    (["fetch", "--model", "yolo_nas_s"], "error: Missing option '--weights'."),
])
def test_user_errors_are_one_line_with_exit_code_2(args, message):
    proc = _run(*args)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""


def test_fetch_prints_what_it_loaded(tmp_path):
    import torch

    from builder.models.registry import construct

    torch.save({"net": construct("ppyoloe_s", 2).state_dict()}, tmp_path / "two.pth")
    proc = _run("fetch", "--model", "ppyoloe_s", "--weights", str(tmp_path / "two.pth"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ppyoloe_s: 2 classes,") and "sha256 " in proc.stdout
