"""Template overrides are the user's code: they cannot change the render context, bring in a file from outside
their folder, or run without bound in time, memory or output, and any failure is one line."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading

import pytest

from builder.core.errors import UserError
from builder.runners import select_runner
from builder.targets import render
from builder.targets.build import resolve_class_names, resolve_spec, template_context
from builder.targets.render import SHIPPED, Renderer
from cli_runs import run_cli

SHAPE = (64, 64)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One real export and the context `builder bundle` renders the Triton target from (no export per test)."""
    spec = resolve_spec(target="triton", model="ppyoloe_s", input_image_shape=SHAPE)
    outcome = select_runner("local").run(spec.export, tmp_path_factory.mktemp("stage"), None)
    names = resolve_class_names(spec, outcome.result, None)
    return spec, template_context(spec, outcome.result, names, "model.onnx", outcome.versions)


def _override(folder, template: str, text: str, keep_shipped: bool = True):
    path = folder / "templates" / template
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + ((SHIPPED / template).read_text() if keep_shipped else ""))
    return folder / "templates"


def _render_target(spec, context, templates, staging):
    staging.mkdir()
    spec.target_class(spec).render(Renderer(templates), context, staging)


@pytest.mark.parametrize("mutation, attribute", [
    ("{% set _ = class_names.clear() %}", "'clear' of 'list'"),
    ("{% set _ = input.update({'shape': [1, 3, 9, 9]}) %}", "'update' of 'dict'"),
    ("{% set _ = outputs.append(outputs[0]) %}", "'append' of 'list'"),
    ("{% set _ = nms.pop('iou_threshold') %}", "'pop' of 'dict'"),
])
def test_an_override_cannot_change_the_context(built, mutation, attribute, tmp_path):
    spec, context = built
    before = copy.deepcopy(context)
    templates = _override(tmp_path, "triton/README.md.j2", mutation)
    with pytest.raises(UserError) as e:
        _render_target(spec, context, templates, tmp_path / "staging")
    assert e.value.one_line() == (f"override 'triton/README.md.j2' failed to render: access to attribute "
                                  f"{attribute} object is unsafe.")
    assert context == before


def test_each_render_gets_its_own_copy_of_the_context(tmp_path):
    """Even an object the sandbox does not know as mutable is changed only in the template's copy, whether the
    render runs here or (it runs an override) in its child process, which gets the context pickled."""
    import io

    tally = io.StringIO()
    templates = _override(tmp_path, "common/labels.txt.j2", "{{ tally.write('x') }}{{ tally.getvalue() }}",
                          keep_shipped=False)
    renderer = Renderer(templates)
    for call in (renderer.render, renderer.render, renderer.render_here, renderer.render_here):
        assert call("common/labels.txt.j2", {"tally": tally}) == "1x"
    assert tally.getvalue() == ""


@pytest.mark.parametrize("text, reason", [
    ("{{ 1/0 }}", "ZeroDivisionError: division by zero"),
    ("{% for i in range(10**9) %}{% endfor %}", "OverflowError: Range too big"),
    ("{% include 'triton/config.pbtxt.j2' %}", "it includes or calls itself without end"),
    ("{{ max_batch_size | join(', ') }}", "'int' object is not iterable"),
    ("{{ name.encode('no-such-codec') }}", "LookupError: unknown encoding: no-such-codec"),
    ("{{ (class_names | first) - 1 }}", "unsupported operand type(s) for -: 'str' and 'int'"),
])
def test_any_failure_of_an_override_is_one_line_naming_it(built, text, reason, tmp_path):
    spec, context = built
    templates = _override(tmp_path, "triton/config.pbtxt.j2", text)
    with pytest.raises(UserError) as e:
        _render_target(spec, context, templates, tmp_path / "staging")
    assert e.value.one_line().startswith(f"override 'triton/config.pbtxt.j2' failed to render: {reason}")


@pytest.mark.parametrize("text, message", [
    ("{{ 1/0 }}", "override 'common/detections.py.j2' failed to render: ZeroDivisionError: division by zero"),
    ("{% if %}", "override 'common/detections.py.j2' line 1: Expected an expression"),
    ("{% include 'common/nope.j2' %}", "override 'common/detections.py.j2' includes 'common/nope.j2', which does "
                                       "not exist"),
])
def test_an_override_included_by_a_shipped_template_is_named(built, text, message, tmp_path):
    spec, context = built
    templates = _override(tmp_path, "common/detections.py.j2", text)
    with pytest.raises(UserError) as e:
        _render_target(spec, context, templates, tmp_path / "staging")
    assert e.value.one_line().startswith(message)


def test_a_shipped_template_fails_in_one_line_only_on_the_users_values(built):
    spec, context = built
    renderer = Renderer()
    with pytest.raises(UserError, match="shipped template 'triton/triton_client.py.j2' failed to render: cannot "
                                        "write nan into generated code"):
        renderer.render("triton/triton_client.py.j2", {**context, "output_names": [float("nan")]})

    class Broken:
        def __iter__(self):
            raise ZeroDivisionError("a bug in builder")

    with pytest.raises(ZeroDivisionError, match="a bug in builder"):  # a traceback, not a user error
        renderer.render("common/labels.txt.j2", {**context, "class_names": Broken()})


@pytest.mark.parametrize("first_line, message", [
    ("{% set _ = class_names.clear() %}{% set _ = input.update({'shape': [1, 3, 9, 9]}) %}",
     "access to attribute 'clear' of 'list' object is unsafe."),
    ("{{ 1/0 }}", "ZeroDivisionError: division by zero"),
])
def test_cli_refuses_a_failing_override_in_one_line_and_leaves_nothing(first_line, message, tmp_path):
    templates = _override(tmp_path, "triton/README.md.j2", first_line)
    done = subprocess.run([sys.executable, "-m", "builder", "bundle", "--target", "triton", "--model", "ppyoloe_s",
                           "--input-shape", str(SHAPE[0]), "--runner", "local", "--templates", str(templates),
                           "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        f"error: override 'triton/README.md.j2' failed to render: {message}"]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["templates"]  # no bundle, no staging folder


# ---- links: only files inside the templates folder are overrides --------------------------------------------------

def _outside(tmp_path):
    """A file and a folder outside the templates folder, which a link inside it could bring in."""
    secret = tmp_path / "outside" / "triton" / "README.md.j2"
    secret.parent.mkdir(parents=True)
    secret.write_text("SECRET {{ name }}\n")
    return secret


@pytest.mark.parametrize("linked, name", [("file", "triton/README.md.j2"), ("folder", "triton")])
def test_a_link_in_the_templates_folder_is_refused_in_one_line_naming_it(linked, name, tmp_path, capsys, monkeypatch):
    secret = _outside(tmp_path)
    templates = tmp_path / "templates"
    (templates / "triton").mkdir(parents=True)
    if linked == "file":
        (templates / "triton" / "README.md.j2").symlink_to(secret)
    else:
        (templates / "triton").rmdir()
        (templates / "triton").symlink_to(secret.parent, target_is_directory=True)
    code, errors, _ = run_cli(["bundle", "--target", "triton", "--model", "ppyoloe_s", "--input-shape", "64x64",
                               "--runner", "local", "--templates", str(templates), "--output",
                               str(tmp_path / "out" / "b")], capsys, tmp_path, monkeypatch)
    assert code == 2 and errors == [f"error: '{name}' in the templates folder '{templates}' is a link (copy what it "
                                    f"links to into the folder: a link can bring in a file from outside)"]


def test_a_fifo_in_the_templates_folder_is_refused(tmp_path):
    templates = tmp_path / "templates"
    (templates / "triton").mkdir(parents=True)
    os.mkfifo(templates / "triton" / "README.md.j2")
    with pytest.raises(UserError) as e:
        Renderer(templates)
    assert e.value.one_line() == f"'triton/README.md.j2' in the templates folder '{templates}' is not a file"


def test_the_loader_renders_the_override_as_checked_not_what_its_path_holds_later(tmp_path):
    secret = _outside(tmp_path)
    templates = _override(tmp_path, "common/labels.txt.j2", "checked\n", keep_shipped=False)
    renderer = Renderer(templates)
    (templates / "common" / "labels.txt.j2").unlink()
    (templates / "common" / "labels.txt.j2").symlink_to(secret)  # swapped for a link after the check
    assert renderer.render("common/labels.txt.j2", {"name": "x"}) == "checked\n"
    assert renderer.render_here("common/labels.txt.j2", {"name": "x"}) == "checked\n"


# ---- bounds: an override cannot run for hours, or fill the memory or the disk ---------------------------------------

NESTED_LOOPS = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"


def test_an_override_that_runs_past_the_time_bound_is_one_line_naming_it_even_in_a_thread(built, tmp_path,
                                                                                            monkeypatch):
    """The bound is wall-clock, kept by a child process: no SIGALRM, which only the main thread may use (bundles
    are built in threads and Ray workers)."""
    monkeypatch.setattr(render, "OVERRIDE_SECONDS", 5)
    spec, context = built
    templates = _override(tmp_path, "triton/README.md.j2", NESTED_LOOPS)
    failed = []

    def build():
        try:
            _render_target(spec, context, templates, tmp_path / "staging")
        except UserError as e:
            failed.append(e.one_line())

    thread = threading.Thread(target=build)
    thread.start()
    thread.join()
    assert failed == ["override 'triton/README.md.j2' did not finish rendering within 5 s (does a loop run too "
                      "long?)"]


def test_a_shipped_template_that_runs_a_looping_override_names_the_override(built, tmp_path, monkeypatch):
    monkeypatch.setattr(render, "OVERRIDE_SECONDS", 5)
    spec, context = built
    templates = _override(tmp_path, "common/detections.py.j2", NESTED_LOOPS)
    with pytest.raises(UserError) as e:
        Renderer(templates).render("triton/triton_client.py.j2", context)
    assert e.value.one_line() == ("override 'common/detections.py.j2' did not finish rendering within 5 s (does a "
                                  "loop run too long?)")


@pytest.mark.parametrize("text, message", [
    ("{% for i in range(99999) %}{{ 'x' * 1000 }}{% endfor %}",
     "override 'triton/README.md.j2' rendered more than 16 MiB of text (does a loop run too long?)"),
    ("{{ 'x' * 2**34 }}",
     "override 'triton/README.md.j2' failed to render: it needs more than the 1 GiB of memory an override may use"),
], ids=["output", "memory"])
def test_an_override_past_the_output_or_memory_bound_is_one_line_naming_it(built, text, message, tmp_path):
    spec, context = built
    templates = _override(tmp_path, "triton/README.md.j2", text)
    with pytest.raises(UserError) as e:
        _render_target(spec, context, templates, tmp_path / "staging")
    assert e.value.one_line() == message


def test_the_cli_stops_a_looping_override_in_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(render, "OVERRIDE_SECONDS", 5)
    templates = _override(tmp_path, "standalone/README.md.j2", NESTED_LOOPS)
    code, errors, _ = run_cli(["bundle", "--target", "standalone", "--model", "ppyoloe_s", "--input-shape", "64x64",
                               "--runner", "local", "--templates", str(templates), "--output",
                               str(tmp_path / "out" / "b")], capsys, tmp_path, monkeypatch)
    assert code == 2 and errors == ["error: override 'standalone/README.md.j2' did not finish rendering within 5 s "
                                    "(does a loop run too long?)"]


def test_the_context_reaches_an_override_unchanged(tmp_path):
    """Pickled, not JSON: the `py` filter writes a tuple and a list differently."""
    templates = _override(tmp_path, "common/labels.txt.j2", "{{ value | py }} {{ value[1] is sameas value[2] }}",
                          keep_shipped=False)
    shared = [2.5, None]
    value = (1, shared, shared, {"k": ("t",)}, "é\n")
    assert Renderer(templates).render("common/labels.txt.j2", {"value": value}) == (
        "(1, [2.5, None], [2.5, None], {'k': ('t',)}, 'é\\n') True")


def test_only_renders_that_run_an_override_leave_this_process(tmp_path):
    templates = _override(tmp_path, "common/detections.py.j2", "")
    renderer = Renderer(templates)
    assert renderer.overrides_reached("triton/triton_client.py.j2") == ["common/detections.py.j2"]  # includes it
    assert renderer.overrides_reached("common/detections.py.j2") == ["common/detections.py.j2"]
    assert renderer.overrides_reached("triton/config.pbtxt.j2") == []  # rendered here, as without overrides
    assert Renderer().overrides_reached("triton/triton_client.py.j2") == []
