"""Reading checkpoints safely: SuperGradients trainer checkpoints, plain state dicts, files or URLs."""
from __future__ import annotations

import pathlib
import pickle
import zipfile
from typing import Any, Mapping

from builder.core.errors import UserError

#: how many differing keys an error message lists before it summarises
SHOWN_KEYS = 4


#: what torch.load raises on a file that is not a checkpoint it can read: the unpickler fails in many ways
#: on foreign bytes (a text file's first byte read as an opcode is a KeyError, a one-byte file an IndexError)
UNREADABLE = (KeyError, IndexError, AttributeError, UnicodeDecodeError, zipfile.BadZipFile, pickle.UnpicklingError,
              RuntimeError, EOFError, ValueError, OSError, TypeError)
#: how a file torch.save wrote begins: a zip archive, or (the legacy format) a pickle's PROTO opcode
CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def read_checkpoint(path: str | pathlib.Path) -> dict[str, Any]:
    """Unpickle with `weights_only=True`: tensors and plain containers only, never code."""
    import torch

    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist or is not a file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as e:
        raise _unreadable(path, e) from None
    if not isinstance(data, Mapping):
        raise UserError(f"checkpoint '{path}' holds a {type(data).__name__}, not a state dict")
    return dict(data)


def _unreadable(path: pathlib.Path, error: BaseException) -> UserError:
    """One line for a checkpoint torch.load refused: code it would have run, or why the bytes are no checkpoint."""
    # torch's messages run to paragraphs of advice: keep the first sentence of each line
    lines = [line.strip().split(". ")[0].rstrip(".")[:200] for line in str(error).splitlines() if line.strip()]
    if isinstance(error, pickle.UnpicklingError):
        refused = next((line for line in lines if "GLOBAL" in line), None)  # weights_only names what it refused
        if refused is not None:
            return UserError(f"refusing checkpoint '{path}': it holds Python objects other than tensors, which "
                             f"could run code when loaded ({refused})",
                             hint="re-save it as a plain state_dict with torch.save(model.state_dict(), path)")
    try:
        with open(path, "rb") as f:
            head = f.read(len(CHECKPOINT_MAGIC[0]))
    except OSError as e:
        return UserError(f"cannot read checkpoint '{path}': {e.strerror or e}")
    if not head:
        reason = "the file is empty"
    elif not head.startswith(CHECKPOINT_MAGIC):
        reason = "not a PyTorch checkpoint (torch.save writes a zip archive or a pickle)"
    elif isinstance(error, OSError) and not isinstance(error, zipfile.BadZipFile):
        reason = error.strerror or (lines[0] if lines else type(error).__name__)
    elif (operand := next((line for line in lines if line.startswith("Unsupported operand")), None)) is not None:
        reason = f"a pickle torch.save did not write, which the safe loader cannot read ({operand})"
    else:
        reason = f"it is truncated or corrupt ({type(error).__name__}" + (f": {lines[0]})" if lines else ")")
    return UserError(f"cannot read checkpoint '{path}': {reason}")


def extract_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The model weights in a checkpoint, as SuperGradients picks them.

    A trainer checkpoint keeps the EMA weights in `ema_net` (preferred: they are what SG evaluates and
    publishes) and the raw weights in `net`; anything else is taken as a state dict. A `module.` prefix
    left by DataParallel/DDP is stripped.
    """
    import torch

    for key in ("ema_net", "net"):
        if isinstance(checkpoint.get(key), Mapping):
            state = dict(checkpoint[key])
            break
    else:
        state = dict(checkpoint)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not state or not_tensors:
        raise UserError("the checkpoint holds no state dict of tensors"
                        + (f" (e.g. '{not_tensors[0]}' is not a tensor)" if not_tensors else ""))
    return state


def checkpoint_class_names(checkpoint: Mapping[str, Any]) -> list[str] | None:
    """Class names recorded by SuperGradients' trainer (`processing_params.class_names`), if any."""
    params = checkpoint.get("processing_params")
    names = params.get("class_names") if isinstance(params, Mapping) else None
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def state_dict_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str | None:
    """One line naming the keys that are missing, unexpected or of another shape; None when they fit."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
                for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape differs (checkpoint vs model)", reshaped)):
        if keys:
            shown = ", ".join(keys[:SHOWN_KEYS]) + (f", ... {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")
            parts.append(f"{len(keys)} {label}: {shown}")
    return "; ".join(parts) or None
