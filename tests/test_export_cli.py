"""`builder export` on the command line: the printed snippet runs, bad input is one line, nothing half-written."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from builder.cli import EXPORT_FLAGS
from builder.exporting.spec import ExportSpec


def _builder(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, cwd=cwd)


def test_every_spec_field_has_one_cli_flag_and_no_default_of_its_own():
    # --engine is SuperGradients' shorthand that the spec turns into its nms and runtime fields
    assert sorted(name for _, name, kind in EXPORT_FLAGS if kind != "engine") == sorted(ExportSpec.model_fields)
    from builder.cli import export_command

    for param in export_command.params:
        if param.name in ExportSpec.model_fields and not param.required:
            assert param.default is None, param.name


@pytest.mark.parametrize("fmt, unpack", [("batch", "num_predictions, pred_boxes, pred_scores, pred_classes = "),
                                         ("flat", "[predictions] = ")])
def test_printed_snippet_runs_as_printed_and_prints_detections(fmt, unpack, tmp_path):
    from builder.models.registry import construct

    torch.save(construct("ppyoloe_s", 3).state_dict(), tmp_path / "w.pt")
    proc = _builder("export", "--model", "ppyoloe_s", "--weights", str(tmp_path / "w.pt"), "--output",
                    str(tmp_path / "m.onnx"), "--input-shape", "160x192", "--format", fmt, "--conf", "0",
                    "--max-detections", "5")
    assert proc.returncode == 0, proc.stderr
    assert "input  'images': uint8 [1, 3, 160, 192] (RGB)" in proc.stdout
    snippet = proc.stdout.split("Run it:\n\n", 1)[1]
    assert unpack in snippet
    run = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 5 and all(line.startswith("image 0: class ") for line in lines)


@pytest.mark.parametrize("args, message", [
    (["--input-shape", "100x100"], "error: invalid input_image_shape: height and width must be multiples of 32"),
    (["--batch-size", "2", "--dynamic-batch"], "error: invalid options: dynamic_batch and a batch_size other than 1"),
    (["--conf", "1.5"], "error: invalid confidence_threshold: Input should be less than or equal to 1"),
    (["--no-postprocessing", "--format", "flat"], "error: invalid options: output_predictions_format only applies"),
    (["--format", "xml"], "error: Invalid value for '--format': 'xml' is not one of 'batch', 'flat'."),
])
def test_bad_export_options_are_one_line_and_write_nothing(args, message, tmp_path):
    proc = _builder("export", "--model", "yolo_nas_s", "--output", str(tmp_path / "x.onnx"), *args)
    assert proc.returncode == 2 and proc.stderr.startswith(message), proc.stderr
    assert proc.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_a_file_in_the_output_path_is_refused_before_anything_is_written(tmp_path):
    """Missing folders are made (as mkdir -p would); a file where a folder must go is one line, before any work."""
    (tmp_path / "no").write_text("a file")
    proc = _builder("-q", "export", "--model", "ppyoloe_s", "--input-shape", "64x64", "--output",
                    str(tmp_path / "no" / "such" / "x.onnx"))
    assert proc.returncode == 2 and "is not a folder" in proc.stderr and proc.stderr.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["no"]




def _appearing(monkeypatch, module, name: str, path, content: bytes) -> None:
    """`module.name` wrapped so that `path` appears (written by someone else) once it has run: a file that turns up
    at the output while the export works."""
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        done = real(*args, **kwargs)
        path.write_bytes(content)
        return done

    monkeypatch.setattr(module, name, wrapped)


def test_export_never_replaces_a_file_that_appears_at_the_output_while_it_works(tmp_path, monkeypatch, capsys):
    """--force is checked up front, and the final move is a no-replace rename: the file that appeared is kept.
    (In this process: torch keeps its own caches in TMPDIR, so the leftovers checked are the output folder's.)"""
    import builder.stage
    from builder.cli import main

    output = tmp_path / "m.onnx"
    _appearing(monkeypatch, builder.stage, "run_stage", output, b"the user's own model")
    argv = ["export", "--model", "ppyoloe_s", "--input-shape", "64x64", "--runner", "local", "--output", str(output)]
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: '{output}' already exists (pass --force to replace it)"
    assert output.read_bytes() == b"the user's own model" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    assert main([*argv, "--force"]) == 0
    assert output.read_bytes().startswith(b"\x08")  # an ONNX ModelProto (field 1, ir_version), not the user's bytes
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_a_model_object_exported_without_force_never_replaces_a_file_that_appeared_meanwhile(tmp_path, monkeypatch):
    import builder
    import builder.exporting.graphs
    from builder.core.errors import UserError
    from builder.models.registry import construct

    output = tmp_path / "m.onnx"
    _appearing(monkeypatch, builder.exporting.graphs, "finalize", output, b"the user's own model")
    with pytest.raises(UserError, match="already exists"):
        builder.export(construct("ppyoloe_s", 2), output, input_image_shape=(64, 64), force=False)
    assert output.read_bytes() == b"the user's own model" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
