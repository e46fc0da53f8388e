"""YOLO-NAS S/M/L: the family's declaration (the network is in network.py, loaded when a model is built)."""
from builder.core.preprocessing import Preprocessing
from builder.models.family import Family

FAMILY = Family(
    name="yolo_nas",
    network="builder.models.yolo_nas.network",
    parameters={"yolo_nas_s": 19_053_888, "yolo_nas_m": 51_182_658, "yolo_nas_l": 66_976_392},
    preprocessing=Preprocessing(channel_order="RGB", mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0),
                                resize="letterbox", pad_value=114, letterbox_margin=640 - 636),
    default_confidence=0.25,
    default_iou=0.7,
)
