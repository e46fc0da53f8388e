"""The shared basics: box IoU, text tables, the ONNX Runtime session factory, log lines, the benchmarks' CPU line."""
from __future__ import annotations

import logging
import pathlib
import sys
import warnings

import numpy as np
import pytest

from builder.core.boxes import iou
from builder.core.tables import markdown_table, text_table

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def brute_iou(a, b) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i, (ax1, ay1, ax2, ay2) in enumerate(a):
        for j, (bx1, by1, bx2, by2) in enumerate(b):
            w, h = min(ax2, bx2) - max(ax1, bx1), min(ay2, by2) - max(ay1, by1)
            inter = max(w, 0) * max(h, 0)
            union = max(ax2 - ax1, 0) * max(ay2 - ay1, 0) + max(bx2 - bx1, 0) * max(by2 - by1, 0) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


DEGENERATE = np.array([
    [10, 10, 10, 10],  # a point
    [10, 10, 10, 30],  # zero width
    [0, 0, 20, 0],  # zero height
    [30, 30, 20, 20],  # inverted: no area
    [0, 0, 20, 20],  # a real box sharing corners with the above
    [0, 0, 20, 20],  # the same box again
    [20, 20, 40, 40],  # touches the previous one at a corner only
], dtype=np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_iou_matches_a_brute_force_loop_on_random_and_degenerate_boxes(dtype):
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, (40, 2, 2))
    random = np.concatenate([corners.min(1), corners.max(1)], axis=1)
    boxes = np.concatenate([random, DEGENERATE]).astype(dtype)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")  # 0/0 in a zero-area union must not even warn
        got = iou(boxes, boxes[::-1])
    assert got.shape == (len(boxes), len(boxes)) and got.dtype == dtype
    np.testing.assert_allclose(got, brute_iou(boxes.astype(np.float64), boxes[::-1].astype(np.float64)),
                               rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-7)
    assert np.all((got >= 0) & (got <= 1))


def test_iou_of_degenerate_boxes_is_zero_and_of_identical_boxes_one():
    got = iou(DEGENERATE, DEGENERATE)
    assert np.all(got[:4] == 0) and np.all(got[:, :4] == 0)
    assert got[4, 5] == 1.0 and got[5, 6] == 0.0


def test_iou_of_no_boxes_is_an_empty_matrix():
    assert iou(np.zeros((0, 4)), DEGENERATE).shape == (0, len(DEGENERATE))
    assert iou(DEGENERATE, np.zeros((0, 4), np.float32)).shape == (len(DEGENERATE), 0)


def test_text_table_pads_each_column_its_own_way_and_strips_line_ends():
    rows = [("name", "n", "note"), ("a", "1234", "x"), ("longer", "5", "")]
    assert text_table(rows, "lrl") == ["name       n  note",
                                       "a       1234  x",
                                       "longer     5"]
    assert text_table(rows, "rrr") == ["  name     n  note",
                                       "     a  1234     x",
                                       "longer     5"]
    assert text_table([], "lr") == []


def test_markdown_table_pads_columns_under_a_rule():
    assert markdown_table(["model", "ms"], [["a", 1.5], ["bigger", "-"]]).splitlines() == [
        "| model  | ms  |",
        "|--------|-----|",
        "| a      | 1.5 |",
        "| bigger | -   |",
    ]


@pytest.fixture
def tiny_model():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["out"])], "tiny", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("form", ["proto", "bytes", "path", "str"])
def test_session_opens_every_form_of_model(tiny_model, form, tmp_path):
    import onnx

    from builder.exporting.sessions import inference_session

    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model, str(path))
    model = {"proto": tiny_model, "bytes": tiny_model.SerializeToString(), "path": path, "str": str(path)}[form]
    session = inference_session(model)
    out = session.run(None, {"images": np.array([[-1.0, 0.0, 2.0]], np.float32)})[0]
    np.testing.assert_array_equal(out, [[0.0, 0.0, 2.0]])
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_session_applies_threads_quiet_logging_and_skips_missing_providers(tiny_model):
    from builder.exporting.sessions import inference_session

    session = inference_session(tiny_model, threads=2, providers=("NoSuchExecutionProvider", "CPUExecutionProvider"))
    options = session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level) == (2, 1, 3)
    assert session.get_providers() == ["CPUExecutionProvider"]
    default = inference_session(tiny_model).get_session_options()
    assert (default.intra_op_num_threads, default.inter_op_num_threads, default.log_severity_level) == (0, 0, 3)


@pytest.fixture
def builder_logger():
    """builder's logger as the test found it: configure() replaces its handlers and level."""
    from builder.core.log import logger

    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved


def test_log_lines_name_builder_levels_without_renaming_them_for_everyone(builder_logger, capsys):
    from builder.core.log import configure, notice, warn

    configure(quiet=False)
    notice("one")
    warn("two")
    builder_logger.error("three")
    assert capsys.readouterr().err == "note: one\nwarning: two\nerror: three\n"
    assert logging.getLevelName(logging.INFO) == "INFO" and logging.getLevelName(logging.WARNING) == "WARNING"
    configure(quiet=True)
    notice("hidden")
    warn("hidden")
    assert capsys.readouterr().err == ""


def test_a_failed_export_gives_torch_its_log_level_back(monkeypatch):
    import torch

    from builder.exporting.onnx_file import trace_to_onnx

    torch_log = logging.getLogger("torch.onnx")
    before = torch_log.level

    def broken(*args, **kwargs):
        assert torch_log.level == logging.ERROR  # silenced while it runs...
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter failed"):
        trace_to_onnx(torch.nn.Identity(), torch.zeros(1, 3, 8, 8), None, False, 17)
    assert torch_log.level == before  # ...and not after


def test_benchmark_machine_line_names_the_cpu_and_its_vector_extensions(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from common import machine

    cpuinfo = ("processor\t: 0\nmodel name\t: Example Xeon 9000\nflags\t\t: fpu sse avx2 avx512f avx512_vnni "
               "amx_tile amx_int8\n\nprocessor\t: 1\nmodel name\t: Example Xeon 9000\nflags\t\t: fpu\n")
    line = machine(cpuinfo)
    assert line.startswith("CPU: Example Xeon 9000, ") and "\n" not in line
    assert line.endswith("avx2 yes, avx512f yes, avx512_vnni yes, avx_vnni no, amx yes")
    assert machine("").endswith("avx2 no, avx512f no, avx512_vnni no, avx_vnni no, amx no")
    sys.modules.pop("common", None)  # a generic name: leave no trace for other tests
