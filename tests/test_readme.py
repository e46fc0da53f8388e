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
    install, main_job, tests = _readme_commands()
    assert "-c constraints.txt" in install and main_job.startswith("builder ") and "pytest" in tests


def test_ci_runs_the_readme_install_and_test_commands_verbatim():
    install, _, tests = _readme_commands()
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

    _, main_job, _ = _readme_commands()
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
