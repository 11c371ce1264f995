"""The torch modules ``dir-export`` turns into ONNX graphs, and the list of an entry's graphs.

Every module maps float32 tensors: images (N, 3, H, W) sRGB [0, 1] with H, W multiples of the latent stride
(4), latents (N, C, H/4, W/4), guide means (N, m2*F).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from modelstore.manifest import (
    ALIGNMENT_FILE,
    DECODER_FILE,
    DENOISE_FILE,
    DIRNET_FILE,
    GUIDE_FILE,
    PILOT_FILE,
    SERVE_FILE,
)
from training.models import DiRSystem

OPSET = 17
#: The serving graph's second input: the spatial mean of the guide graph's output over the whole image.
GUIDE_MEAN = "guide_mean"
GUIDE_OUTPUT = "guide_features"
SERVING_OUTPUTS = ("restored", "r_plus", "r0", "pilot")


class ServingGraph(nn.Module):
    """The fused graph: (image, guide_mean) -> (restored, r_plus, r0, pilot).

    image (N, 3, H, W) sRGB [0, 1]; guide_mean (N, m2*F): the spatial mean of :class:`GuideGraph`'s output
    over the whole image ``image`` is (a tile of); ``guide_mean=None`` pools over ``image`` itself.
    """

    def __init__(self, system: DiRSystem) -> None:
        super().__init__()
        self.system = system

    def forward(
        self, image: Tensor, guide_mean: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """See :meth:`DiRSystem.forward`; the dict becomes a tuple in ``SERVING_OUTPUTS`` order."""
        out = self.system(image, guide_mean)
        return out["restored"], out["r_plus"], out["r0"], out["pilot"]


class GuideGraph(nn.Module):
    """Pass 1 of tiled serving: image (N, 3, H, W) sRGB [0, 1] -> guide_features (N, m2*F, H/4, W/4)."""

    def __init__(self, system: DiRSystem) -> None:
        super().__init__()
        self.system = system

    def forward(self, image: Tensor) -> Tensor:
        """See :meth:`DiRSystem.guide_features`."""
        return self.system.guide_features(image)


class DenoiseGraph(nn.Module):
    """The ``denoise`` serving mode: image (N, 3, H, W) sRGB [0, 1] -> restored (N, 3, H, W) in [0, 1].

    :meth:`DiRSystem.denoise`: the degraded image goes through the system's denoiser (trained by
    ``dir-train denoise``; without one, the clean-image encoder DfRNet, as the pilot) and straight into the
    decoder D*, skipping DiRNet and the alignment network. It removes noise and compression artefacts but
    keeps the camera's colour and tone, which A would "correct" (not the paper's restoration;
    docs/DECISIONS.md). No global pooling: tiles are independent, one pass.
    """

    def __init__(self, system: DiRSystem) -> None:
        super().__init__()
        self.system = system

    def forward(self, image: Tensor) -> Tensor:
        """image (N, 3, H, W) float32 sRGB [0, 1], H, W multiples of 4 -> (N, 3, H, W) in [0, 1]."""
        return self.system.denoise(image)


class HalfServingGraph(nn.Module):
    """The fused graph computed in float16 with float32 inputs and outputs (casts at both ends).

    Same I/O names, shapes and ranges as :class:`ServingGraph`, so a service swaps the file, nothing else.
    """

    def __init__(self, system: DiRSystem) -> None:
        super().__init__()
        self.graph = ServingGraph(system).half()

    def forward(self, image: Tensor, guide_mean: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """image (N, 3, H, W) float32 sRGB [0, 1], guide_mean (N, m2*F) float32 -> the four serving
        outputs as float32."""
        restored, r_plus, r0, pilot = self.graph(image.half(), guide_mean.half())
        return restored.float(), r_plus.float(), r0.float(), pilot.float()


class _Mean(nn.Module):
    """An encoder's posterior mean only: image (N, 3, H, W) -> (N, C, H/4, W/4)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: Tensor) -> Tensor:
        return self.encoder(image)[0]


class _Clamped(nn.Module):
    """The decoder with the output clamped to [0, 1], as served."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, r_plus: Tensor) -> Tensor:
        return self.decoder(r_plus).clamp(0.0, 1.0)


@dataclass
class Graph:
    """One graph of an entry: its file name, the module exported, input and output names, manifest role."""

    file: str
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    role: str


def entry_graphs(system: DiRSystem) -> list[Graph]:
    """Every graph of an entry, in export order: the guide graph first (the serving graph's parity feeds
    need its output), then the serving graph, then the components. Only the denoise graph sees the
    denoiser; the others are exported from :meth:`DiRSystem.without_denoiser`."""
    core = system.without_denoiser()
    parts = core.get_submodule
    return [
        Graph(GUIDE_FILE, GuideGraph(core), ("image",), (GUIDE_OUTPUT,), "serve-guide"),
        Graph(SERVE_FILE, ServingGraph(core), ("image", GUIDE_MEAN), SERVING_OUTPUTS, "serve"),
        Graph(DENOISE_FILE, DenoiseGraph(system), ("image",), ("restored",), "serve-denoise"),
        Graph(DIRNET_FILE, _Mean(parts("dirnet")), ("image",), ("r0",), "component"),
        Graph(PILOT_FILE, _Mean(parts("dfrnet")), ("image",), ("pilot",), "component"),
        Graph(ALIGNMENT_FILE, parts("alignment"), ("r0", "pilot"), ("r_plus",), "component"),
        Graph(DECODER_FILE, _Clamped(parts("decoder")), ("r_plus",), ("restored",), "component"),
    ]
