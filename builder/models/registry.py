"""Which variants exist, and building one with its weights loaded."""
from __future__ import annotations

import functools
import importlib
import os
import pathlib
from typing import TYPE_CHECKING, Any

from builder.core.errors import UserError, did_you_mean
from builder.core.log import warn
from builder.models.family import Family

if TYPE_CHECKING:
    from builder.models.base import Detector

# adding a family means adding its folder (FAMILY in __init__.py, BUILDERS in its network module) and a line here
FAMILY_MODULES = ("builder.models.yolo_nas", "builder.models.ppyoloe")
DEFAULT_NUM_CLASSES = 80
#: A 100000-class head is 1.6 G parameters (6 GiB) in ppyoloe_x and its decoded scores are 3.4 GB per 640x640
#: image; 10000 costs 0.9 GiB and 340 MB and is far above the largest detection label sets (LVIS: 1203)
MAX_NUM_CLASSES = 10_000


@functools.cache
def families() -> tuple[Family, ...]:
    return tuple(importlib.import_module(name).FAMILY for name in FAMILY_MODULES)


def variants() -> dict[str, Family]:
    return {variant: family for family in families() for variant in family.variants}


def family_of(variant: str) -> Family:
    known = variants()
    if variant not in known:
        raise UserError(f"unknown model '{variant}'",
                        hint=did_you_mean(variant, known) or "builder models lists them")
    return known[variant]


RANDOM_WEIGHTS_SEED = 0


def construct(variant: str, num_classes: int = DEFAULT_NUM_CLASSES) -> "Detector":
    """The variant with fresh (random) weights, in training form."""
    family = family_of(variant)
    _check_num_classes(num_classes)
    model = family.builder(variant)(num_classes)
    model.variant = variant
    model.family = family
    model.num_classes = num_classes
    model.class_names = None
    return model


def _check_num_classes(num_classes: Any) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or not 1 <= num_classes <= MAX_NUM_CLASSES:
        raise UserError(f"num_classes must be an integer from 1 to {MAX_NUM_CLASSES}, got {num_classes!r}")


def parameter_count(variant: str, num_classes: int = DEFAULT_NUM_CLASSES) -> int:
    """Training-form parameter count, without allocating the weights."""
    import torch

    with torch.device("meta"):
        return sum(p.numel() for p in construct(variant, num_classes).parameters())


#: weights given by name rather than by file or URL (see resolve_weights)
NAMED_WEIGHTS = ("coco", "demo")


def resolve_weights(variant: str, weights: str) -> pathlib.Path:
    """A local file for a weights argument: a path, an http(s) URL, 'coco' (the published weights) or 'demo'."""
    from builder.models.download import fetch

    if weights == "demo":
        from builder.models.demo import demo_checkpoint

        return demo_checkpoint(variant)
    if weights == "coco":
        url = family_of(variant).pretrained_url.format(variant=variant)
        mirror = os.environ.get("BUILDER_WEIGHTS_MIRROR")
        if mirror:  # air-gapped sites serve the published files from their own host
            url = mirror.rstrip("/") + "/" + url.rsplit("/", 1)[1]
        return fetch(url)
    if weights.startswith(("http://", "https://")):
        return fetch(weights)
    path = pathlib.Path(weights).expanduser()
    if not path.exists():
        raise UserError(f"weights '{weights}' are neither a file, a URL, 'coco' nor 'demo'")
    return path


def class_count_axes(variant: str) -> dict[str, int]:
    """The state_dict keys whose shape depends on the class count (the class-prediction layers), each with
    the axis that holds it. Read off two models built without weights."""
    import torch

    with torch.device("meta"):
        one, two = construct(variant, 1).state_dict(), construct(variant, 2).state_dict()
    return {key: next(i for i, (a, b) in enumerate(zip(tensor.shape, two[key].shape)) if a != b)
            for key, tensor in one.items() if tensor.shape != two[key].shape}


def num_classes_in(variant: str, state: dict[str, Any]) -> int | None:
    """The class count a state dict was trained with, read off the tensors whose shape depends on it."""
    for key, axis in class_count_axes(variant).items():
        if key in state and axis < state[key].dim():
            return int(state[key].shape[axis])
    return None


def build(variant: str, num_classes: int | None = None, checkpoint_path: str | None = None,
          pretrained_weights: str | None = None, **unknown: Any) -> "Detector":
    """The variant with weights loaded strictly; random weights (with a warning) when none are given."""
    from builder.models.checkpoints import (checkpoint_class_names, extract_state_dict, read_checkpoint,
                                            state_dict_mismatch)

    if unknown:
        raise UserError(f"unknown option(s) for models.get: {', '.join(sorted(unknown))}")
    family_of(variant)
    if num_classes is not None:  # 0 is a class count like any other, not "not given": refused, not replaced by 80
        _check_num_classes(num_classes)
    if checkpoint_path and pretrained_weights:
        raise UserError("give either checkpoint_path or pretrained_weights, not both")
    weights = checkpoint_path or pretrained_weights
    if weights is None:
        import torch

        with torch.random.fork_rng():  # seeded: the same build twice gives the same bytes
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = construct(variant, num_classes or DEFAULT_NUM_CLASSES)
        warn(f"no weights given: {variant} is randomly initialised (seed {RANDOM_WEIGHTS_SEED}); its output is "
             f"for pipeline testing only")
        return model.eval()

    path = resolve_weights(variant, str(weights))
    try:
        checkpoint = read_checkpoint(path)
    except UserError as e:
        from builder.models.download import forget

        if not forget(path):
            raise
        # a download that is no checkpoint (an error text, a cut file) must not stay cached as if it were one
        raise UserError(str(e), hint="; ".join(filter(None, (e.hint, "removed from the weights cache: the next "
                                                                      "run downloads it again")))) from None
    state = extract_state_dict(checkpoint)
    found = num_classes_in(variant, state)
    model = construct(variant, num_classes or found or DEFAULT_NUM_CLASSES)
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        hint = (f"it was trained with {found} classes: on the command line pass --num-classes {found}, in Python "
                f"pass num_classes={found}"
                if found and found != model.num_classes else "is it a checkpoint of another model?")
        raise UserError(f"checkpoint '{path.name}' does not fit {variant} with {model.num_classes} classes: {problem}",
                        hint=hint)
    model.load_state_dict(state, strict=True)
    # a diverged training run saves NaN/Inf weights: such a model detects nothing, ever, without any error
    import torch

    broken = next((key for key, tensor in state.items()
                   if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all())),
                  None)
    if broken is not None:
        raise UserError(f"checkpoint '{path.name}': tensor '{broken}' holds NaN/Inf values",
                        hint="the training run diverged: take an earlier checkpoint")
    names = checkpoint_class_names(checkpoint)
    if not names and str(weights) == "coco":
        from builder.models.coco import COCO_CLASS_NAMES

        names = list(COCO_CLASS_NAMES)
    model.class_names = names if names and len(names) == model.num_classes else None
    return model.eval()
