"""Yolo-FastestV2 in PyTorch: ShuffleNetV2-0.25x backbone, light FPN with decoupled heads, two scales.

Written from the architecture facts in ``../shared/data/yolo_fastestv2/SOURCE.md`` and the layer names and
shapes of the published state_dict (444 entries). Module names mirror that state_dict so it loads with
``strict=True``.

Input: ``(N, 3, 352, 352)`` float32, **BGR** channel order, values in [0, 1] (plain resize, no letterbox,
no mean/std). Raw outputs per scale (stride 16 then stride 32): ``reg`` (N, 12, H, W) = 3 anchors x
[tx, ty, tw, th] (anchor-major), ``obj`` (N, 3, H, W) and ``cls`` (N, 80, H, W) logits, the class logits
shared by the 3 anchors of a cell. :class:`YoloFastestV2Export` bakes the decode into the graph and returns
the YOLOv5 layout ``(N, B, 5 + C)`` with B = 3 * (22*22 + 11*11) = 1815 boxes at 352 input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INPUT_SIZE = 352
NUM_CLASSES = 80
STRIDES = (16, 32)
# (w, h) in pixels of the 352 input; first three for the stride-16 head, last three for stride 32.
ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((12.64, 19.39), (37.88, 51.48), (55.71, 138.31)),
    ((126.91, 78.23), (131.57, 214.55), (279.92, 258.87)),
)
STAGE_CHANNELS = (24, 48, 96, 192)
STAGE_REPEATS = (4, 8, 4)
FPN_CHANNELS = 72


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


def channel_shuffle_split(x: Tensor) -> tuple[Tensor, Tensor]:
    """Split (N, C, H, W) into two (N, C/2, H, W) halves taking even channels first, odd channels second.

    This is ShuffleNetV2's channel shuffle (groups=2) fused with the channel split of the next block.
    """
    n, c, h, w = x.shape
    x = x.reshape(n, c // 2, 2, h, w)
    return x[:, :, 0], x[:, :, 1]


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit. Stride 2: both branches see the input, channels double. Stride 1: shuffle-split,
    the main branch transforms one half, the other half passes through."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        mid = cout // 2
        main_out = cout - cin
        self.branch_main = nn.Sequential(
            *_conv_bn(cin, mid, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(mid, mid, 3, stride, groups=mid),
            *_conv_bn(mid, main_out, 1),
            nn.ReLU(inplace=True),
        )
        if stride == 2:
            self.branch_proj = nn.Sequential(
                *_conv_bn(cin, cin, 3, stride, groups=cin),
                *_conv_bn(cin, cin, 1),
                nn.ReLU(inplace=True),
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 2:
            return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)
        passthrough, transformed = channel_shuffle_split(x)
        return torch.cat((passthrough, self.branch_main(transformed)), 1)


class ShuffleNetV2(nn.Module):
    """Backbone: returns the stride-16 (96 ch) and stride-32 (192 ch) feature maps."""

    def __init__(self) -> None:
        super().__init__()
        c0 = STAGE_CHANNELS[0]
        self.first_conv = nn.Sequential(*_conv_bn(3, c0, 3, 2), nn.ReLU(inplace=True))
        self.max_pool = nn.MaxPool2d(3, 2, 1)
        stages: list[nn.Sequential] = []
        cin = c0
        for cout, repeats in zip(STAGE_CHANNELS[1:], STAGE_REPEATS, strict=True):
            blocks = [ShuffleV2Block(cin, cout, 2)]
            blocks += [ShuffleV2Block(cout // 2, cout, 1) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.max_pool(self.first_conv(x))
        c2 = self.stage3(self.stage2(x))
        c3 = self.stage4(c2)
        return c2, c3


class DWConvBlock(nn.Module):
    """Two (depthwise 5x5 + BN + ReLU, pointwise 1x1 + BN) pairs; no activation after the pointwise BNs."""

    def __init__(self, channels: int, k: int = 5) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *_conv_bn(channels, channels, k, groups=channels),
            nn.ReLU(inplace=True),
            *_conv_bn(channels, channels, 1),
            *_conv_bn(channels, channels, k, groups=channels),
            nn.ReLU(inplace=True),
            *_conv_bn(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class LightFPN(nn.Module):
    """Stride 32: 1x1 squeeze of C3. Stride 16: nearest x2 upsample of C3 concatenated with C2, 1x1 squeeze.
    Each scale has a classification head and a regression head; objectness is read from the classification
    head's features (checked: reading it from the regression head does not reproduce the upstream scores)."""

    def __init__(self, c2: int, c3: int, out: int) -> None:
        super().__init__()
        self.conv1x1_2 = nn.Sequential(*_conv_bn(c2 + c3, out, 1), nn.ReLU(inplace=True))
        self.conv1x1_3 = nn.Sequential(*_conv_bn(c3, out, 1), nn.ReLU(inplace=True))
        self.cls_head_2 = DWConvBlock(out)
        self.reg_head_2 = DWConvBlock(out)
        self.reg_head_3 = DWConvBlock(out)
        self.cls_head_3 = DWConvBlock(out)

    def forward(self, c2: Tensor, c3: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        s3 = self.conv1x1_3(c3)
        s2 = self.conv1x1_2(torch.cat((F.interpolate(c3, scale_factor=2.0, mode="nearest"), c2), 1))
        return (self.reg_head_2(s2), self.cls_head_2(s2)), (self.reg_head_3(s3), self.cls_head_3(s3))


class YoloFastestV2(nn.Module):
    """The detector with raw head outputs; see the module docstring for shapes and channel order."""

    def __init__(self, num_classes: int = NUM_CLASSES, num_anchors: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.backbone = ShuffleNetV2()
        self.fpn = LightFPN(STAGE_CHANNELS[2], STAGE_CHANNELS[3], FPN_CHANNELS)
        self.output_reg_layers = nn.Conv2d(FPN_CHANNELS, 4 * num_anchors, 1)
        self.output_obj_layers = nn.Conv2d(FPN_CHANNELS, num_anchors, 1)
        self.output_cls_layers = nn.Conv2d(FPN_CHANNELS, num_classes, 1)

    def forward(self, x: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """``x`` (N, 3, 352, 352) BGR in [0, 1] -> per scale (stride 16, 32): (reg, obj, cls) logits."""
        c2, c3 = self.backbone(x)
        outs = []
        for reg_feat, cls_feat in self.fpn(c2, c3):
            outs.append(
                (
                    self.output_reg_layers(reg_feat),
                    self.output_obj_layers(cls_feat),
                    self.output_cls_layers(cls_feat),
                )
            )
        return outs


def decode_scale(reg: Tensor, obj: Tensor, cls: Tensor, stride: int, anchors: Tensor) -> Tensor:
    """Decode one scale into YOLOv5 rows ``(N, A*H*W, 5 + C)``: cx, cy, w, h (input pixels), obj, class probs.

    xy = (sigmoid(txy) * 2 - 0.5 + grid_xy) * stride; wh = (sigmoid(twh) * 2)^2 * anchor; obj = sigmoid;
    class probabilities = softmax over C, shared by the A anchors of a cell. Rows are ordered (y, x, anchor).
    ``anchors`` is (A, 2) (w, h) in input pixels.
    """
    n, _, h, w = reg.shape
    a = anchors.shape[0]
    t = reg.sigmoid().reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2)  # (N, H, W, A, 4)
    gy, gx = torch.meshgrid(
        torch.arange(h, dtype=reg.dtype, device=reg.device),
        torch.arange(w, dtype=reg.dtype, device=reg.device),
        indexing="ij",
    )
    grid = torch.stack((gx, gy), -1).reshape(1, h, w, 1, 2)
    anchor_wh = anchors.to(reg.dtype).reshape(1, 1, 1, a, 2)
    xy = (t[..., :2] * 2.0 - 0.5 + grid) * stride
    wh = (t[..., 2:] * 2.0) ** 2 * anchor_wh
    objectness = obj.sigmoid().permute(0, 2, 3, 1).unsqueeze(-1)  # (N, H, W, A, 1)
    probs = cls.softmax(1).permute(0, 2, 3, 1).unsqueeze(3).expand(n, h, w, a, cls.shape[1])
    return torch.cat((xy, wh, objectness, probs), -1).reshape(n, h * w * a, 5 + cls.shape[1])


class YoloFastestV2Export(nn.Module):
    """Wraps :class:`YoloFastestV2` and decodes in-graph: (N, 3, 352, 352) BGR [0,1] -> (N, 1815, 85) YOLOv5
    rows (cx, cy, w, h in pixels of the 352 input; objectness; 80 softmax class probabilities)."""

    def __init__(self, model: YoloFastestV2) -> None:
        super().__init__()
        self.model = model
        self.anchors: Tensor
        self.register_buffer("anchors", torch.tensor(ANCHORS), persistent=False)  # (scales, A, 2)

    def forward(self, x: Tensor) -> Tensor:
        outs = self.model(x)
        rows = [
            decode_scale(reg, obj, cls, stride, self.anchors[i])
            for i, ((reg, obj, cls), stride) in enumerate(zip(outs, STRIDES, strict=True))
        ]
        return torch.cat(rows, 1)
