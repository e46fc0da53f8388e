"""Template overrides are the user's code: they cannot change the render context, and any failure is one line."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest

from builder.core.errors import UserError
from builder.runners import select_runner
from builder.targets.build import resolve_class_names, resolve_spec, template_context
from builder.targets.render import SHIPPED, Renderer

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
    """Even an object the sandbox does not know as mutable is changed only in the template's copy."""

    class Tally:
        def __init__(self):
            self.seen = []

        def add(self, item):
            self.seen.append(item)
            return ""

    tally = Tally()
    templates = _override(tmp_path, "common/labels.txt.j2", "{{ tally.add(1) }}{{ tally.seen | length }}",
                          keep_shipped=False)
    renderer = Renderer(templates)
    assert renderer.render("common/labels.txt.j2", {"tally": tally}) == "1"
    assert renderer.render("common/labels.txt.j2", {"tally": tally}) == "1"
    assert tally.seen == []


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
