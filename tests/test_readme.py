"""README.md's three commands are the ones CI runs."""
import pathlib
import re

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
