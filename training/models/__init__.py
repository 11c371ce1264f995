"""DiR networks and the assembled restoration system.

Contract for users of a trained model::

    from training.models import load_system
    system = load_system("runs/default", variant=None, device="cpu")  # run folder or checkpoint file
    restored = system.restore(image)  # (N, 3, H, W) float32 sRGB [0, 1], any H, W -> same shape, [0, 1]
    out = system(image)  # H, W multiples of system.size_multiple (4) -> dict:
    # "restored" (N, 3, H, W) [0, 1]; "r_plus", "r0" (N, C, H/4, W/4); "pilot" for full / no_pilot

``variant`` is one of ``VARIANTS``: "full" (r+ = A(r0, pilot), the paper's method), "no_pilot" (A guided
by r0), "r0_only" (a decoder on r0) and "autoencoder" (plain encoder/decoder of equal size). A run folder
holds stage2.pt (full) and ablation-<variant>.pt; a checkpoint file carries its own variant.
Errors are :class:`training.errors.DiRError` subclasses (``CheckpointError`` here).
"""

from training.models.alignment import AlignmentNet, GuidedLayer, dynamic_depthwise_conv
from training.models.config import ModelConfig
from training.models.networks import Decoder, Discriminator, GaussianEncoder, PlainEncoder, ResBlock
from training.models.system import (
    MODEL_REGISTRY,
    VARIANT_PARTS,
    VARIANTS,
    DiRSystem,
    Variant,
    build_model,
    checkpoint_name,
    load_system,
    model_config_from_dict,
    system_state,
)

__all__ = [
    "MODEL_REGISTRY",
    "VARIANTS",
    "VARIANT_PARTS",
    "AlignmentNet",
    "Decoder",
    "DiRSystem",
    "Discriminator",
    "GaussianEncoder",
    "GuidedLayer",
    "ModelConfig",
    "PlainEncoder",
    "ResBlock",
    "Variant",
    "build_model",
    "checkpoint_name",
    "dynamic_depthwise_conv",
    "load_system",
    "model_config_from_dict",
    "system_state",
]
