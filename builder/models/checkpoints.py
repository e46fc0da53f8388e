"""Reading checkpoints safely: SuperGradients trainer checkpoints, plain state dicts, files or URLs."""
from __future__ import annotations

import pathlib
import pickle
from typing import Any, Mapping

from builder.core.errors import UserError

#: how many differing keys an error message lists before it summarises
SHOWN_KEYS = 4


def read_checkpoint(path: str | pathlib.Path) -> dict[str, Any]:
    """Unpickle with `weights_only=True`: tensors and plain containers only, never code."""
    import torch

    path = pathlib.Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist or is not a file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"refusing checkpoint '{path}': it holds Python objects other than tensors, which "
                        f"could run code when loaded ({first[:160]})",
                        hint="re-save it as a plain state_dict with torch.save(model.state_dict(), path)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint '{path}': {str(e).strip().splitlines()[0][:200]}") from None
    if not isinstance(data, Mapping):
        raise UserError(f"checkpoint '{path}' holds a {type(data).__name__}, not a state dict")
    return dict(data)


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
