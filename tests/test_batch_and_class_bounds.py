"""Sizes no machine holds, refused in one line before anything is allocated: bench's batch sizes (bounded as a
fixed-batch export is) and a model's class count given to models.get."""
from __future__ import annotations

import pathlib

import pytest

import builder
from builder.core.errors import UserError
from cli_runs import run_cli


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("bundle") / "det"
    builder.bundle(out, target="standalone", model="ppyoloe_s", input_image_shape=(64, 64), runner="local")
    return out


@pytest.mark.parametrize("sizes", ["1025", "1,2000", "1000000"])
def test_bench_refuses_a_batch_larger_than_an_export_takes_before_it_runs_any(sizes, bundle, capsys, tmp_path,
                                                                            monkeypatch):
    code, errors, stderr = run_cli(["bench", str(bundle), "--batch-sizes", sizes, "--duration", "0.1"], capsys,
                                   tmp_path, monkeypatch)
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert "at most 1024" in errors[0] and "64 images of 640x640" in errors[0], errors[0]
    assert "batch 1:" not in stderr  # refused up front, not after timing the sizes before it


def test_bench_bounds_a_batch_by_its_pixels_as_an_export_does():
    from builder.exporting.spec import MAX_BATCH_PIXELS
    from builder.verification.bench import _check_batch_sizes

    _check_batch_sizes((1, 64), 640, 640)
    _check_batch_sizes((1024,), 64, 64)
    with pytest.raises(UserError, match=f"batch size 65 .* at most {MAX_BATCH_PIXELS:,} pixels"):
        _check_batch_sizes((1, 65), 640, 640)


def test_bench_help_states_the_bounds_the_spec_holds(capsys):
    from builder.cli import main
    from builder.exporting.spec import MAX_BATCH_PIXELS, MAX_BATCH_SIZE

    assert main(["bench", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"each at most {MAX_BATCH_SIZE}" in shown
    assert "at most 64 images of 640x640" in shown and MAX_BATCH_PIXELS == 64 * 640 * 640


@pytest.mark.parametrize("num_classes", [0, -3, True, 2.0, "80", 10_001])
@pytest.mark.parametrize("weights", ["random", "checkpoint"])
def test_models_get_refuses_a_class_count_outside_one_to_the_most(num_classes, weights, tmp_path):
    """0 used to mean "not given" and built 80 classes (or the checkpoint's) without a word."""
    import torch

    from builder import models
    from builder.models.registry import MAX_NUM_CLASSES, construct

    options = {}
    if weights == "checkpoint":
        torch.save(construct("ppyoloe_s", 3).state_dict(), tmp_path / "three.pth")
        options["checkpoint_path"] = str(tmp_path / "three.pth")
    with pytest.raises(UserError, match=f"^num_classes must be an integer from 1 to {MAX_NUM_CLASSES}, got "):
        models.get("ppyoloe_s", num_classes=num_classes, **options)
