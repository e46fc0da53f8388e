"""Hostile or odd inputs: unreadable and NaN checkpoints, decompression bombs, and images of every PNG/JPEG kind."""
from __future__ import annotations

import io
import logging
import pickle
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import builder
from builder import models
from builder.core.errors import UserError
from builder.core.images import MAX_IMAGE_PIXELS, PHOTOS, ImageTooLarge, read_image
from builder.models.registry import construct
from builder.quantize.calibration import folder_photos


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, timeout=600)


def _one_error_line(done) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    return line


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(pixels: np.ndarray, color_type: int) -> bytes:
    """A PNG written by hand: Pillow cannot save 16-bit RGB. `pixels` is H x W (x C), uint8 or big-endian uint16."""
    height, width = pixels.shape[:2]
    depth = 16 if pixels.dtype.itemsize == 2 else 8
    rows = pixels.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def _bomb(path, width: int, height: int):
    """A 1x1 PNG whose header declares width x height (CRC fixed): a few bytes that claim gigapixels."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# --- checkpoints ---------------------------------------------------------------------------------------------

def _truncated_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"net": {"w": torch.zeros(64)}}, buffer)
    return buffer.getvalue()[:200]


@pytest.mark.parametrize("content, reason", [
    (b"", "the file is empty"),
    (b"hello, this is a text file\n", "not a PyTorch checkpoint"),
    (b"model: yolo_nas_s\n", "not a PyTorch checkpoint"),
    (b"\x80", "it is truncated or corrupt (IndexError"),
    (_truncated_checkpoint(), "it is truncated or corrupt (RuntimeError: PytorchStreamReader failed reading zip "
                              "archive"),
    (pickle.dumps({"w": [1.0]}, protocol=4), "a pickle torch.save did not write"),
], ids=["empty", "text", "yaml", "one-byte", "truncated-zip", "foreign-pickle"])
def test_an_unreadable_checkpoint_is_one_line_saying_why(content, reason, tmp_path):
    path = tmp_path / "best.pth"
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        models.get("ppyoloe_s", checkpoint_path=str(path))
    assert e.value.one_line().startswith(f"cannot read checkpoint '{path}': {reason}")


def test_cli_refuses_an_empty_checkpoint_in_one_line(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    line = _one_error_line(_cli("fetch", "--model", "ppyoloe_s", "--weights", str(tmp_path / "empty.pth")))
    assert line == f"error: cannot read checkpoint '{tmp_path / 'empty.pth'}': the file is empty"


def _state_with(key: str, value: float) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = construct("ppyoloe_s", 80).state_dict()
    state[key].view(-1)[3] = value
    return state


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_checkpoint_with_nan_or_inf_weights_is_refused_naming_the_tensor(value, tmp_path):
    key = next(k for k in construct("ppyoloe_s", 80).state_dict() if k.startswith("head.") and k.endswith("weight"))
    torch.save({"net": _state_with(key, value)}, tmp_path / "diverged.pth")
    with pytest.raises(UserError) as e:
        models.get("ppyoloe_s", checkpoint_path=str(tmp_path / "diverged.pth"))
    assert str(e.value) == f"checkpoint 'diverged.pth': tensor '{key}' holds NaN/Inf values"


def test_cli_refuses_a_nan_checkpoint_in_one_line(tmp_path):
    key = next(k for k in construct("ppyoloe_s", 80).state_dict() if k.endswith("running_var"))
    torch.save(_state_with(key, float("nan")), tmp_path / "nan.pth")
    line = _one_error_line(_cli("fetch", "--model", "ppyoloe_s", "--weights", str(tmp_path / "nan.pth")))
    assert line.startswith(f"error: checkpoint 'nan.pth': tensor '{key}' holds NaN/Inf values")


# --- images --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width, height", [(20000, 20000), (9000, 9000)])
def test_a_decompression_bomb_is_refused_before_it_is_decoded(width, height, tmp_path):
    """20000x20000 is past Pillow's own error; 9000x9000 only past its warning, and past builder's bound."""
    assert width * height > MAX_IMAGE_PIXELS
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLarge) as e:
        read_image(_bomb(tmp_path / "bomb.png", width, height))
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    assert f"declares {width * height} pixels" in str(e.value) and "decompression bomb" in str(e.value)
    assert Image.MAX_IMAGE_PIXELS == limit  # Pillow's global setting is left as it was


def _write_jpeg_parts(folder):
    data = (PHOTOS / "coffee.jpg").read_bytes()
    (folder / "b_truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "c_notes.jpg").write_text("not an image, whatever the suffix says")
    (folder / "d_empty.png").write_bytes(b"")


def test_calibration_skips_bombs_and_broken_files_with_a_warning(tmp_path, caplog):
    _bomb(tmp_path / "a_bomb.png", 20000, 20000)
    _write_jpeg_parts(tmp_path)
    shutil.copy(PHOTOS / "rocket.jpg", tmp_path / "e_rocket.jpg")
    with caplog.at_level(logging.WARNING, logger="builder"):
        photos = folder_photos(tmp_path, 8)
    assert [name for name, _ in photos] == ["e_rocket.jpg"]
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping ")]
    assert [m.split(":")[0] for m in skipped] == ["skipping a_bomb.png", "skipping b_truncated.jpg",
                                                   "skipping c_notes.jpg", "skipping d_empty.png"]
    assert "decompression bomb" in skipped[0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return builder.bundle(tmp_path_factory.mktemp("v") / "det", target="standalone", model="ppyoloe_s",
                          input_image_shape=(64, 64)).destination


@pytest.mark.parametrize("kind", ["bomb", "truncated", "not-an-image"])
def test_verify_refuses_an_unreadable_image_in_one_line(bundle, kind, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    if kind == "bomb":
        path, reason = _bomb(images / "bomb.png", 20000, 20000), "it declares 400000000 pixels"
    elif kind == "truncated":
        path, reason = images / "b_truncated.jpg", "image file is truncated"
        _write_jpeg_parts(tmp_path)
        shutil.move(tmp_path / path.name, path)
    else:
        path, reason = images / "c_notes.jpg", "cannot identify image file"
        _write_jpeg_parts(tmp_path)
        shutil.move(tmp_path / path.name, path)
    line = _one_error_line(_cli("verify", str(bundle), "--images", str(images)))
    assert line.startswith(f"error: cannot read image '{path}': ") and reason in line


def _gray16() -> np.ndarray:
    return np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)


def _expected_rgb(kind: str) -> np.ndarray:
    gray16 = _gray16()
    if kind in ("gray16", "gray16-tiff"):
        return np.repeat((gray16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    if kind == "rgb16":
        rgb16 = np.stack([gray16, 65535 - gray16, np.full_like(gray16, 0x80FF)], axis=2)
        return (rgb16 >> 8).astype(np.uint8)
    return np.broadcast_to(np.array([200, 30, 60], np.uint8), (16, 16, 3))


def _write(kind: str, path) -> None:
    gray16 = _gray16()
    colour = (200, 30, 60)
    if kind == "gray16":
        path.write_bytes(_png(gray16, color_type=0))
    elif kind == "gray16-tiff":
        Image.fromarray(gray16).save(path)
    elif kind == "rgb16":
        path.write_bytes(_png(np.stack([gray16, 65535 - gray16, np.full_like(gray16, 0x80FF)], axis=2), color_type=2))
    elif kind == "rgba":
        Image.new("RGBA", (16, 16), colour + (0,)).save(path)
    elif kind == "palette-transparent":
        image = Image.new("P", (16, 16), 1)
        image.putpalette([0, 0, 0, *colour] + [0] * 762)
        image.save(path, transparency=0)
    elif kind == "cmyk-jpeg":
        Image.new("RGB", (16, 16), colour).convert("CMYK").save(path, quality=100)


@pytest.mark.parametrize("kind, suffix, tolerance", [
    ("gray16", ".png", 0), ("gray16-tiff", ".tif", 0), ("rgb16", ".png", 0), ("rgba", ".png", 0),
    ("palette-transparent", ".png", 0), ("cmyk-jpeg", ".jpg", 3),
])
def test_wide_paletted_alpha_and_cmyk_images_read_as_their_rgb(kind, suffix, tolerance, tmp_path):
    path = tmp_path / f"{kind}{suffix}"
    _write(kind, path)
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (16, 16, 3)
    assert np.abs(image.astype(int) - _expected_rgb(kind)).max() <= tolerance
