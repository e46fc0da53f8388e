"""What a new user meets in the first ten minutes: the demo weights, checks before any work, help that says
what each flag does, legible pictures, plain words, and quiet test logs."""
from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import click
import pytest

import builder
from builder.cli import cli, main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _builder(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


# ---- the demo weights ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    return builder.bundle(tmp_path_factory.mktemp("demo") / "shapes", target="standalone", model="ppyoloe_s",
                          weights="demo", input_image_shape=(320, 320), runner="local")


def test_the_demo_checkpoint_is_small_half_precision_and_documented():
    from builder.models import demo
    from builder.core.hashing import sha256_of

    assert demo.CHECKPOINT.stat().st_size <= 20 * 1024 * 1024
    assert sha256_of(demo.CHECKPOINT) == demo.CHECKPOINT_SHA256
    readme = (demo.FOLDER / "README.md").read_text()
    assert demo.CHECKPOINT_SHA256 in readme and sha256_of(demo.IMAGE) in readme
    assert "python benchmarks/train_shapes.py --model ppyoloe_s" in readme


def test_a_demo_bundle_carries_the_scene_and_says_how_to_run_it(demo_bundle):
    root = demo_bundle.destination
    manifest = demo_bundle.manifest
    assert (root / "samples" / "shapes.jpg").read_bytes() == (ROOT / "builder/data/demo/shapes.jpg").read_bytes()
    assert "samples/shapes.jpg" in {entry.path for entry in manifest.files}
    assert manifest.model.weights.source == "demo"
    assert manifest.class_names == ["circle", "square", "triangle", "ring", "cross", "star"]
    readme = (root / "README.md").read_text()
    assert readme.startswith("# ppyoloe_s on ONNX Runtime\n")  # the name is the model's: said once
    assert "python infer.py samples/shapes.jpg --save detected.png" in readme
    assert f"python {root / 'infer.py'} {root / 'samples' / 'shapes.jpg'}" in demo_bundle.usage
    assert demo_bundle.usage.startswith("Bundled ppyoloe_s (fp32, batch format) for ONNX Runtime")


def test_the_demo_bundle_finds_the_scenes_shapes(demo_bundle):
    import json

    root = demo_bundle.destination
    done = subprocess.run([sys.executable, str(root / "infer.py"), str(root / "samples" / "shapes.jpg"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    truth = json.loads((ROOT / "builder/data/demo/shapes.json").read_text())["objects"]
    labels = {d["label"] for d in result["detections"]}
    assert labels & {o["class"] for o in truth}, result


def test_verify_checks_a_demo_bundle_on_its_own_scene(demo_bundle, capsys):
    """builder's 7 generic photos hold no shapes: verified on them, the demo bundle failed ("the reference finds
    nothing"); a bundle's samples/ are pictures of what its model detects, so verify uses them by default."""
    assert main(["verify", str(demo_bundle.destination), "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert [image["image"] for image in result["per_image"]] == ["samples/shapes.jpg"]
    assert result["passed"] and result["overall"]["reference"] >= 1 and result["overall"]["recall"] == 1.0
    assert "verifying on the bundle's own 1 sample image(s) in samples/" in err


def test_verify_that_finds_nothing_to_compare_names_images(demo_bundle, capsys):
    from builder.core.images import PHOTOS

    assert main(["verify", str(demo_bundle.destination), "--images", str(PHOTOS)]) == 3
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "the reference finds nothing on these images" in line and "give --images DIR" in line


@pytest.mark.parametrize("args, expected", [
    (["--model", "yolo_nas_s", "--weights", "demo"],
     "error: the demo weights are a ppyoloe_s checkpoint, not yolo_nas_s (use --model ppyoloe_s with --weights demo)"),
    (["--model", "yolo_nas_xl"], "error: invalid model: unknown model 'yolo_nas_xl' (did you mean 'yolo_nas_l'?)"),
])
@pytest.mark.parametrize("command", ["bundle", "export"])
def test_names_are_checked_before_the_first_progress_line(command, args, expected, tmp_path, capsys):
    output = ["--target", "triton", "--output", str(tmp_path / "b")] if command == "bundle" else [
        "--output", str(tmp_path / "m.onnx")]
    assert main([command, *args, *output]) == 2
    out, err = capsys.readouterr()
    assert (out, err.splitlines()) == ("", [expected.replace("invalid model", "invalid export.model")
                                             if command == "bundle" else expected])
    assert list(tmp_path.iterdir()) == []


def test_random_is_the_explicit_name_of_random_weights():
    from builder.exporting.spec import ExportSpec

    assert ExportSpec.create(model="yolo_nas_s", weights="random") == ExportSpec.create(model="yolo_nas_s")


# ---- help: what each flag does, with its default -----------------------------------------------------------------

def _options(name: str):
    parent = click.Context(cli, info_name="builder")
    command = cli.get_command(parent, name)
    return [p for p in command.get_params(click.Context(command, parent=parent)) if isinstance(p, click.Option)]


@pytest.mark.parametrize("name", ["export", "bundle"])
def test_every_spec_flag_says_what_it_does_and_its_default(name):
    from builder.cli import bundle_flags, EXPORT_FLAGS

    flags = {flag for flag, _field, _kind in (bundle_flags() if name == "bundle" else EXPORT_FLAGS)}
    checked = 0
    for option in _options(name):
        if not set(option.opts) & flags:
            continue
        text = option.help or ""
        assert not text.startswith("Leave out"), option.opts
        assert option.required or "default" in text.lower() or "required" in text.lower(), (option.opts, text)
        checked += 1
    assert checked == len(flags)
    helps = {option.opts[0]: option.help for option in _options(name)}
    assert helps["--no-preprocessing"].startswith("Take float32 input")
    assert helps["--model"].endswith("Required, unless --spec names it.") == (name == "bundle")
    if name == "bundle":
        assert helps["--target"].endswith("Required, unless --spec names it.")
        assert "kserve" in helps["--target"]


def test_a_missing_target_lists_the_registered_targets(tmp_path, capsys):
    assert main(["bundle", "--model", "yolo_nas_s", "--output", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err == ("error: missing --target (triton, standalone, kserve), or a --spec build.yaml "
                                       "that names it\n")


# ---- pictures ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """The generated standalone client, imported as a module."""
    bundle = builder.bundle(tmp_path_factory.mktemp("client") / "det", target="standalone", model="yolo_nas_s",
                            input_image_shape=(64, 64), runner="local")
    spec = importlib.util.spec_from_file_location("generated_infer", bundle.destination / "infer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_label_with_no_room_above_goes_inside_its_box(client):
    [(x1, y1, x2, y2)] = client.label_places([(10, 0, 200, 120)], [(60, 16)], (320, 240))
    assert (x1, y1) == (10, 2) and (x2, y2) == (70, 18)  # inside the top, below the box's line
    [(x1, y1, x2, y2)] = client.label_places([(10, 50, 200, 120)], [(60, 16)], (320, 240))
    assert (y1, y2) == (34, 50)  # above, where there is room


def test_labels_of_nearby_boxes_do_not_overlap_and_stay_in_the_picture(client):
    boxes = [(300, 40, 360, 100), (302, 42, 358, 98), (304, 44, 356, 96)]
    places = client.label_places(boxes, [(80, 16)] * 3, (320, 240))
    for i, a in enumerate(places):
        assert 0 <= a[0] and a[2] <= 320 and 0 <= a[1] and a[3] <= 240, a
        for b in places[i + 1:]:
            assert not client.overlap(a, b), places


def test_label_text_is_legible_on_its_colour(client):
    from PIL import Image

    assert client.ink_on((255, 255, 0)) == (0, 0, 0) and client.ink_on((0, 0, 128)) == (255, 255, 255)
    for background in ((255, 255, 255), (0, 0, 0)):
        image = Image.new("RGB", (200, 100), background)
        found = [{"box": [20, 0, 120, 80], "class_id": 5, "label": "star", "score": 0.9}]  # touches the top
        client.draw_detections(image, found)
        colour = client.PALETTE[5]
        inside = {image.getpixel((x, y)) for x in range(20, 60) for y in range(2, 14)}
        assert colour in inside and client.ink_on(colour) in inside  # the label box and its text


# ---- quiet logs ----------------------------------------------------------------------------------------------------

def test_a_failing_test_shows_no_third_party_debug_logging(tmp_path):
    """torch sets its `torch.__trace` logger to DEBUG; while it propagates, every record reached pytest's report
    of a failing test (~40 lines per export). The report keeps warnings and errors only."""
    (tmp_path / "test_fails.py").write_text(
        "import logging\n\n"
        "def test_fails():\n"
        "    noisy = logging.getLogger('torch.__trace')\n"
        "    noisy.setLevel(logging.DEBUG)\n"
        "    noisy.propagate = True\n"
        "    noisy.debug('trace' + ' noise')\n"
        "    logging.getLogger('builder').warning('a warning' + ' that matters')\n"
        "    assert False, 'on purpose'\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
                           str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path), str(tmp_path / "test_fails.py")],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 1 and "on purpose" in done.stdout, done.stdout[-3000:]
    assert "trace noise" not in done.stdout and "a warning that matters" in done.stdout, done.stdout[-3000:]
