"""Loading weights: SuperGradients checkpoints, plain state dicts, URLs through the cache, and refusals."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from builder import models
from builder.core.errors import UserError
from builder.core.hashing import sha256_of
from builder.models.download import fetch
from builder.models.registry import construct


def _small_state(num_classes=80) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return construct("ppyoloe_s", num_classes).state_dict()


def _assert_same(model, state):
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_supergradients_checkpoint_prefers_ema_weights_and_strips_module_prefix(tmp_path):
    ema, raw = _small_state(), construct("ppyoloe_s", 80).state_dict()
    path = tmp_path / "ckpt_best.pth"
    torch.save({"net": raw, "ema_net": {f"module.{k}": v for k, v in ema.items()}, "epoch": 3, "acc": 0.4,
                "processing_params": {"class_names": [f"c{i}" for i in range(80)], "iou": 0.6}}, path)
    model = models.get("ppyoloe_s", num_classes=80, checkpoint_path=str(path))
    _assert_same(model, ema)
    assert model.class_names[:2] == ["c0", "c1"] and not model.training


def test_trainer_checkpoint_without_ema_uses_net(tmp_path):
    state = _small_state()
    torch.save({"net": state, "epoch": 1}, tmp_path / "ckpt.pth")
    _assert_same(models.get("ppyoloe_s", checkpoint_path=str(tmp_path / "ckpt.pth")), state)


def test_plain_state_dict_round_trip_keeps_outputs(tmp_path):
    model = construct("yolo_nas_s", 4).eval()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    again = models.get("yolo_nas_s", num_classes=4, checkpoint_path=str(tmp_path / "plain.pt"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)[1], again(x)[1])


def test_class_count_is_read_from_the_checkpoint_when_not_given(tmp_path):
    torch.save(_small_state(num_classes=7), tmp_path / "seven.pt")
    assert models.get("ppyoloe_s", checkpoint_path=str(tmp_path / "seven.pt")).num_classes == 7


def test_mismatched_class_count_names_the_keys_and_the_fix(tmp_path):
    torch.save(_small_state(num_classes=7), tmp_path / "seven.pt")
    with pytest.raises(UserError) as err:
        models.get("ppyoloe_s", num_classes=80, checkpoint_path=str(tmp_path / "seven.pt"))
    line = err.value.one_line()
    assert "head.pred_cls.0.weight (7, 384, 3, 3) vs (80, 384, 3, 3)" in line
    assert "pass num_classes=7" in line


def test_checkpoint_of_another_variant_is_refused_with_the_differences(tmp_path):
    torch.save(_small_state(), tmp_path / "pp.pt")
    with pytest.raises(UserError, match=r"does not fit yolo_nas_s .*missing.*unexpected"):
        models.get("yolo_nas_s", checkpoint_path=str(tmp_path / "pp.pt"))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_checkpoint_that_carries_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"net": _small_state(), "extra": _RunsCode(marker)}, path)
    with pytest.raises(UserError, match="refusing checkpoint .*Python objects other than tensors"):
        models.get("ppyoloe_s", checkpoint_path=str(path))
    assert not marker.exists()


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(UserError) as err:
        models.get("yolo_nas_x")
    assert "did you mean 'yolo_nas_s'?" in err.value.one_line() or "did you mean 'yolo_nas_m'?" in err.value.one_line()


def test_no_weights_warns_that_output_is_for_pipeline_testing(caplog):
    with caplog.at_level("WARNING", logger="builder"):
        models.get("ppyoloe_s")
    assert "randomly initialised" in caplog.text and "pipeline testing only" in caplog.text


# --- downloads from a server on 127.0.0.1 ---

def test_url_weights_download_into_the_cache_with_size_and_sha256(tmp_path, file_server, weights_cache):
    torch.save({"net": _small_state()}, tmp_path / "w.pth")
    blob = (tmp_path / "w.pth").read_bytes()
    file_server.files["models/w.pth"] = blob
    url = f"{file_server.url}/models/w.pth"
    model = models.get("ppyoloe_s", checkpoint_path=url)
    _assert_same(model, _small_state())
    [cached] = [p for p in weights_cache.iterdir() if p.suffix == ".pth"]
    record = json.loads(cached.with_name(cached.name + ".json").read_text())
    assert record == {"url": url, "size": len(blob), "sha256": sha256_of(tmp_path / "w.pth"),
                      "etag": file_server.etag("models/w.pth"), "last_modified": None}
    models.get("ppyoloe_s", checkpoint_path=url)  # second time: from the cache, which the server says is current
    assert file_server.answers == [("models/w.pth", 200), ("models/w.pth", 304)]


def test_interrupted_download_resumes_from_where_it_stopped(file_server, weights_cache):
    blob = os.urandom(3 << 20)
    file_server.files["big.bin"] = blob
    file_server.cut_after["big.bin"] = 1 << 20
    url = f"{file_server.url}/big.bin"
    with pytest.raises(UserError, match="run again to resume"):
        fetch(url, progress=False)
    assert not any(p.suffix == ".bin" for p in weights_cache.iterdir())  # nothing half-written under the real name
    path = fetch(url, progress=False)
    assert path.read_bytes() == blob
    assert file_server.requests[-1] == ("big.bin", f"bytes={1 << 20}-")


def test_corrupted_cache_entry_is_fetched_again(file_server, weights_cache):
    file_server.files["a.bin"] = b"x" * 1000
    url = f"{file_server.url}/a.bin"
    path = fetch(url, progress=False)
    path.write_bytes(b"y" * 1000)
    assert fetch(url, progress=False).read_bytes() == b"x" * 1000
    assert len(file_server.requests) == 2


def test_coco_weights_resolve_to_the_published_file_name(tmp_path, file_server, weights_cache, monkeypatch):
    torch.save({"net": _small_state()}, tmp_path / "ppyoloe_s_coco.pth")
    file_server.files["mirror/ppyoloe_s_coco.pth"] = (tmp_path / "ppyoloe_s_coco.pth").read_bytes()
    monkeypatch.setenv("BUILDER_WEIGHTS_MIRROR", f"{file_server.url}/mirror/")
    _assert_same(models.get("ppyoloe_s", pretrained_weights="coco"), _small_state())
    assert file_server.requests == [("mirror/ppyoloe_s_coco.pth", None)]


def test_missing_url_is_one_clear_error(file_server, weights_cache):
    with pytest.raises(UserError, match="HTTP 404"):
        fetch(f"{file_server.url}/nope.pth", progress=False)


def test_cli_refuses_a_malicious_checkpoint_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(_RunsCode(marker), tmp_path / "evil.pth")
    code = ("import sys, builder.models as m\n"
            "from builder.cli import main\n"
            "sys.exit(main(['fetch', '--model', 'ppyoloe_s', '--weights', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "evil.pth")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: refusing checkpoint")
    assert "Traceback" not in proc.stderr and not marker.exists()
