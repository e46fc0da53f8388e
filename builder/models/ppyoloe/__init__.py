"""PP-YOLOE S/M/L/X: the family's declaration (the network is in network.py, loaded when a model is built)."""
from builder.core.preprocessing import Preprocessing
from builder.models.family import Family

FAMILY = Family(
    name="ppyoloe",
    network="builder.models.ppyoloe.network",
    parameters={"ppyoloe_s": 8_084_588, "ppyoloe_m": 24_134_892, "ppyoloe_l": 54_078_556, "ppyoloe_x": 102_331_484},
    # SG's default_ppyoloe_coco_processing_params: reverse channels first, then normalise with ImageNet's RGB
    # statistics, so they land on B, G, R in that order (the checkpoints were trained this way).
    preprocessing=Preprocessing(
        channel_order="BGR",
        mean=(123.675, 116.28, 103.53),
        std=(58.395, 57.12, 57.375),
        resize="stretch",
    ),
    default_confidence=0.5,
    default_iou=0.65,
)
