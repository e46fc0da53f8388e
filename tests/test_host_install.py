"""The thin host: `pip install model-bundle-builder` without the `export` extra.

The host is the CLI, specs, templates, bundles, the docker runner and push/pull; torch, ONNX and ONNX Runtime
come with `[export]`. Where a command needs what a missing extra brings, it stops with one `error:` line that
names the extra (exit 2). The slow tests install the host into a fresh virtual environment and use it for real;
the others check the same boundaries here, with the export toolchain hidden from a subprocess.
"""
from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import click
import pytest

import builder
from builder.cli import cli
from docker_engine import IMAGE, engine_with_image
from source_tree import copy_source_tree

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPORT_TOOLCHAIN = ("torch", "onnx", "onnxscript", "onnxsim", "onnxruntime")


def _pyproject() -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", requirement).group(1)).lower()


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


# ---- pyproject: the host, the extras, and every extra an error names -------------------------------------------

def _named_extras() -> dict[str, list[str]]:
    """extra -> where builder names it: MissingExtraError(module, extra) and require(extra, ...) calls with a
    literal extra, and the keys of builder.core.extras.EXTRAS."""
    named: dict[str, list[str]] = {}
    for path in sorted((ROOT / "builder").rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), filename=where)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if function == "MissingExtraError":
                    argument = node.args[1] if len(node.args) > 1 else next(
                        (k.value for k in node.keywords if k.arg == "extra"), None)
                elif function == "require" and where != "builder/core/extras.py":
                    argument = node.args[0] if node.args else None
                else:
                    continue
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    named.setdefault(argument.value, []).append(f"{where}:{node.lineno}")
                else:  # only the helper itself may pass the extra on as a variable
                    assert where == "builder/core/extras.py", f"{where}:{node.lineno}: name the extra literally"
    from builder.core.extras import EXTRAS

    for extra in EXTRAS:
        named.setdefault(extra, []).append("builder/core/extras.py: EXTRAS")
    return named


def test_every_extra_named_in_an_error_exists():
    extras = _pyproject()["project"]["optional-dependencies"]
    named = _named_extras()
    assert "export" in named
    missing = {extra: places for extra, places in named.items() if extra not in extras}
    assert not missing, f"extras named by builder but not in pyproject.toml: {missing}"


def test_each_extra_brings_the_modules_its_guard_checks():
    from builder.core.extras import EXTRAS

    extras = _pyproject()["project"]["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        brought = {_name(requirement) for requirement in extras[extra]}
        assert set(modules) <= brought, (extra, set(modules) - brought)


def test_the_host_leaves_the_export_toolchain_to_the_export_extra():
    project = _pyproject()["project"]
    host = {_name(requirement) for requirement in project["dependencies"]}
    assert not host & set(EXPORT_TOOLCHAIN), host & set(EXPORT_TOOLCHAIN)
    assert {"click", "pydantic", "jinja2", "tritonclient", "requests", "docker"} <= host
    extras = project["optional-dependencies"]
    assert {_name(requirement) for requirement in extras["export"]} == set(EXPORT_TOOLCHAIN)
    # the README's `pip install -e ".[dev]"` installs the export toolchain for the quick start and the tests
    [itself] = [r for r in extras["dev"] if _name(r) == _name(project["name"])]
    assert "export" in re.search(r"\[(.*)\]", itself).group(1).replace(" ", "").split(",")


def test_require_names_the_extra_and_passes_what_is_installed():
    from builder.core.errors import MissingExtraError
    from builder.core.extras import require

    require("export", "click")  # installed: nothing happens
    with pytest.raises(MissingExtraError) as raised:
        require("export", "builder_no_such_module")
    assert raised.value.one_line() == ("this needs the Python package 'builder_no_such_module', which is not "
                                       "installed (pip install 'model-bundle-builder[export]')")


# ---- the CLI: lazy commands, same help, same options -----------------------------------------------------------

def _builder(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "80", **(env or {})}, timeout=600)


def _contexts(name: str) -> tuple[click.Command, click.Context]:
    parent = click.Context(cli, info_name="builder", **cli.context_settings)
    command = cli.get_command(parent, name)
    return command, click.Context(command, info_name=name, parent=parent)


def test_builder_help_is_what_click_prints_for_the_built_commands(monkeypatch):
    """The group lists its commands without building them; the text equals a plain group's with all built."""
    monkeypatch.setenv("COLUMNS", "80")
    names = cli.list_commands(click.Context(cli))
    assert names == ["bench", "bundle", "export", "fetch", "models", "pull", "push", "release", "verify"]
    plain = click.Group(cli.name, commands={name: _contexts(name)[0] for name in names}, params=cli.params,
                        help=cli.help, context_settings=cli.context_settings)
    expected = plain.get_help(click.Context(plain, info_name="builder", **plain.context_settings))
    done = _builder("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n"


@pytest.mark.parametrize("name", ["bench", "bundle", "export", "fetch", "models", "pull", "push", "release", "verify"])
def test_each_command_help_lists_exactly_its_command_objects_options(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    command, ctx = _contexts(name)
    expected = {opt for param in command.get_params(ctx) if isinstance(param, click.Option)
                for opt in (*param.opts, *param.secondary_opts)}
    done = _builder(name, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout == command.get_help(ctx) + "\n"
    options = done.stdout.split("\nOptions:\n", 1)[1]
    listed = set()
    for line in options.splitlines():
        if line.startswith("  -"):
            first_column = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            listed |= set(re.findall(r"(?<![\w-])--?[A-Za-z0-9][\w-]*", first_column))
    assert listed == expected


def test_export_and_bundle_are_built_only_when_asked_for():
    probe = ("import sys\n"
             "from builder.cli import main\n"
             "code = main(sys.argv[1:])\n"
             "specs = ('pydantic', 'builder.exporting.spec', 'builder.targets.spec')\n"
             "loaded = [m for m in specs if m in sys.modules]\n"
             "print('loaded:' + ','.join(loaded), file=sys.stderr)\n"
             "sys.exit(code)\n")
    for args, specs in ((["--help"], False), (["models", "--help"], False), (["push", "--help"], False),
                        (["expor"], False), (["export", "--help"], True), (["bundle", "--help"], True)):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        [loaded] = [line for line in done.stderr.splitlines() if line.startswith("loaded:")]
        assert ("builder.exporting.spec" in loaded) == specs, (args, done.stderr)
    done = _builder("expor")
    assert done.returncode == 2
    assert done.stderr == "error: No such command 'expor'. Did you mean 'export'? (see 'builder --help')\n"
    from builder.cli import bundle_command, export_command

    assert (export_command.name, bundle_command.name) == ("export", "bundle")
    assert export_command is cli.get_command(None, "export")


# ---- the boundaries, with the export toolchain hidden from a subprocess -----------------------------------------

HIDDEN = ("import sys\n"
          "hidden = set(sys.argv[1].split(','))\n"
          "class Hide:\n"
          "    def find_spec(self, name, path=None, target=None):\n"
          "        if name.split('.')[0] in hidden:\n"
          "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
          "sys.meta_path.insert(0, Hide())\n"
          "from builder.cli import main\n"
          "sys.exit(main(sys.argv[2:]))\n")


def _without(modules, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDDEN, ",".join(modules), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.parametrize("args", [
    ["bundle", "--runner", "local", "--target", "triton", "--model", "yolo_nas_s", "--output", "X"],
    ["export", "--runner", "local", "--model", "yolo_nas_s", "--output", "X.onnx"],
    ["fetch", "--model", "yolo_nas_s", "--weights", "coco"],
    ["verify", "X"],
], ids=["bundle", "export", "fetch", "verify"])
def test_without_the_export_extra_a_command_that_needs_it_is_one_line(args, tmp_path):
    done = _without(EXPORT_TOOLCHAIN, *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert _one_error_line(done.stderr) == ("error: this needs the Python package 'torch', which is not installed "
                                            "(pip install 'model-bundle-builder[export]')")
    assert done.stdout == "" and list(tmp_path.iterdir()) == []


def test_without_the_export_extra_models_get_names_it(tmp_path):
    code = ("import sys\n" + HIDDEN.split("from builder.cli")[0] +
            "import builder\n"
            "from builder.core.errors import MissingExtraError\n"
            "try:\n"
            "    builder.models.get('yolo_nas_s')\n"
            "except MissingExtraError as e:\n"
            "    print(e.one_line())\n")
    done = subprocess.run([sys.executable, "-c", code, ",".join(EXPORT_TOOLCHAIN)], capture_output=True, text=True)
    assert done.stdout.endswith("(pip install 'model-bundle-builder[export]')\n"), done.stderr


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> pathlib.Path:
    """A small standalone bundle, built here (with the export toolchain)."""
    return builder.bundle(tmp_path_factory.mktemp("tiny") / "det", target="standalone", model="yolo_nas_s",
                          input_image_shape=(64, 64), runner="local").destination


def test_without_onnxruntime_bench_names_the_bench_extra(tiny_bundle, tmp_path):
    done = _without(["onnxruntime"], "bench", str(tiny_bundle), "--batch-sizes", "1", "--duration", "0.1",
                    cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert _one_error_line(done.stderr).endswith("(pip install 'model-bundle-builder[bench]')")


# ---- the real host: a fresh virtual environment with `pip install <repo>` and no extra --------------------------

class Host:
    """A virtual environment with the host install; commands run outside the repository, without PYTHONPATH."""

    def __init__(self, venv: pathlib.Path, cwd: pathlib.Path):
        self.venv, self.cwd = venv, cwd
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        self.env["COLUMNS"] = "80"

    def run(self, program: str, *args: str, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.venv / "bin" / program), *args], capture_output=True, text=True,
                              cwd=cwd or self.cwd, env=self.env, timeout=timeout)


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Host:
    root = tmp_path_factory.mktemp("host")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    source = copy_source_tree(root / "source")
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                              "--disable-pip-version-check", "-c", str(ROOT / "constraints.txt"), str(source)],
                             capture_output=True, text=True, timeout=1800)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    shutil.rmtree(source)
    (root / "work").mkdir()
    return Host(venv, root / "work")


@pytest.mark.slow
def test_the_host_has_no_export_toolchain_and_answers_help(host):
    code = ("import importlib.util\n"
            f"print([m for m in {EXPORT_TOOLCHAIN!r} if importlib.util.find_spec(m) is not None])\n")
    done = host.run("python", "-c", code)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
    assert host.run("python", "-c", "import torch").returncode != 0
    done = host.run("python", "-c", "import builder, builder.cli; print(builder.__file__)")
    assert done.returncode == 0 and str(host.venv) in done.stdout, done.stdout + done.stderr  # the installed wheel
    done = host.run("builder", "--help")
    assert done.returncode == 0, done.stderr
    assert _builder("--help").stdout == done.stdout
    for name in cli.list_commands(click.Context(cli)):
        done = host.run("builder", name, "--help")
        assert done.returncode == 0 and done.stdout == _builder(name, "--help").stdout, (name, done.stderr)


@pytest.mark.slow
def test_the_host_lists_the_models(host):
    done = host.run("builder", "models", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(_builder("models", "--json").stdout)


@pytest.mark.slow
def test_the_host_refuses_a_local_export_naming_the_extra(host, tmp_path):
    output = tmp_path / "X"
    done = host.run("builder", "bundle", "--runner", "local", "--target", "triton", "--model", "yolo_nas_s",
                    "--output", str(output), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = _one_error_line(done.stderr)
    assert "'model-bundle-builder[export]'" in line, line
    assert done.stdout == "" and not output.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_host_plans_a_release_and_names_the_cluster_extra_to_build_it(host, tmp_path):
    release = tmp_path / "release.yaml"
    release.write_text("name: detectors\nversion: '1'\nregistry: 127.0.0.1:5999/acme\ninsecure: true\n"
                       "runner: local\nmatrix: {model: [yolo_nas_s, ppyoloe_s], target: [triton]}\n")
    planned = host.run("builder", "release", str(release), "--dry-run", cwd=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.splitlines()[-1] == "2 bundles, 2 builds (dry run: nothing built)"
    built = host.run("builder", "release", str(release), cwd=tmp_path)
    assert built.returncode == 2
    assert _one_error_line(built.stderr).endswith("(pip install 'model-bundle-builder[cluster]')")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release.yaml"]


@pytest.mark.slow
@pytest.mark.registry
def test_the_host_pushes_and_pulls_a_bundle(host, tiny_bundle, tmp_path):
    from oci_registry import running_registry

    with running_registry(tmp_path / "registry") as registry:
        reference = f"{registry}/models/tiny:1"
        pushed = host.run("builder", "push", str(tiny_bundle), reference, "--insecure")
        assert pushed.returncode == 0, pushed.stderr
        assert pushed.stdout.strip().startswith(f"{reference}@sha256:"), pushed.stdout
        digest = pushed.stdout.strip().rsplit("@", 1)[1]
        pulled = host.run("builder", "pull", f"{registry}/models/tiny@{digest}", str(tmp_path / "pulled"),
                          "--insecure")
        assert pulled.returncode == 0, pulled.stderr
    files = {p.relative_to(tiny_bundle).as_posix(): p.read_bytes() for p in tiny_bundle.rglob("*") if p.is_file()}
    back = {p.relative_to(tmp_path / "pulled").as_posix(): p.read_bytes()
            for p in (tmp_path / "pulled").rglob("*") if p.is_file()}
    assert back == files


@pytest.mark.slow
@pytest.mark.docker
def test_the_host_bundles_with_the_docker_runner(host, tmp_path):
    engine_with_image(IMAGE)
    output = tmp_path / "det"
    done = host.run("builder", "bundle", "--runner", "docker", "--image", IMAGE, "--target", "standalone", "--model",
                    "yolo_nas_s", "--input-shape", "64", "--output", str(output), cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["stage"]["runner"] == "docker" and (output / "model.onnx").is_file()
