"""README.md's three commands are the ones CI runs."""
import pathlib
import re

from source_tree import copy_source_tree

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", quick)


def test_readme_has_install_main_job_and_test_commands():
    install, main_job, see, tests = _readme_commands()
    assert "-c constraints.txt" in install and main_job.startswith("builder ") and "pytest" in tests
    assert "--weights demo" in main_job and "--weights demo" in see and "samples/shapes.jpg" in see


def test_ci_runs_the_readme_install_and_test_commands_verbatim():
    install, _, _, tests = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci and tests in ci


def test_constraints_pin_the_cpu_torch_build():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().splitlines()


def test_the_main_job_runs_verbatim_in_a_fresh_clone(tmp_path):
    """The quick start's main job, as a new user types it, where no bundles/ folder exists yet."""
    import os
    import shlex
    import subprocess
    import sys

    _, main_job, _, _ = _readme_commands()
    clone = copy_source_tree(tmp_path / "clone")
    assert not (clone / "bundles").exists()
    argv = shlex.split(main_job)
    executable = pathlib.Path(sys.executable).parent / argv[0]
    env = {**os.environ, "PYTHONPATH": str(clone), "TMPDIR": str(tmp_path)}
    done = subprocess.run([str(executable), *argv[1:]], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr
    output = clone / argv[argv.index("--output") + 1]
    assert (output / "manifest.json").is_file() and (output / "client" / "triton_client.py").is_file()
    assert "Traceback" not in done.stderr


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def test_the_quick_start_finds_the_demo_scenes_shapes_in_a_fresh_clone(tmp_path):
    """The second command, verbatim, in a fresh clone: the client prints real detections of the right classes."""
    import json
    import os
    import subprocess
    import sys

    _, _, see, _ = _readme_commands()
    clone = copy_source_tree(tmp_path / "clone")
    venv_bin = str(pathlib.Path(sys.executable).parent)
    env = {**os.environ, "PYTHONPATH": str(clone), "TMPDIR": str(tmp_path),
           "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "")}
    done = subprocess.run(["bash", "-c", see], cwd=clone, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and (clone / "detected.png").is_file()
    truth = json.loads((clone / "builder" / "data" / "demo" / "shapes.json").read_text())["objects"]
    lines = done.stdout.splitlines()  # the bundle's usage, then the client's table
    [start] = [i for i, line in enumerate(lines) if re.search(r"shapes\.jpg: \d+ detections$", line)]
    printed = [line.split() for line in lines[start + 1:] if line.startswith("  ")]
    found = [(fields[0], float(fields[1]), [float(v) for v in fields[2:6]]) for fields in printed]
    right = [(label, score) for label, score, box in found
             if any(o["class"] == label and _iou(box, o["box"]) >= 0.5 for o in truth)]
    assert right, f"no detection of the right class: {done.stdout}"
    # most of the scene's objects, and few false ones: the demo shows a detector, not noise
    assert len(right) >= len(truth) // 2 and len(right) >= len(found) // 2, done.stdout
