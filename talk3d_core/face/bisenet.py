"""BiSeNet face parser (CelebAMask-HQ, 19 classes) for the ``bisenet`` mask backend.

A compact re-implementation whose parameter names and shapes match the widely used face-parsing
checkpoint ``79999_iter.pth`` (zllrunning/face-parsing.PyTorch), so that file loads with
``torch.load(weights_only=True)`` and a strict key check. The network (Yu et al., BiSeNet, ECCV 2018):

- context path: ResNet-18 (``cp.resnet``) features at 1/8, 1/16 and 1/32 of the input; the 1/32 and
  1/16 features pass attention refinement modules (``cp.arm32``, ``cp.arm16``) plus a global-average
  context (``cp.conv_avg``) and are upsampled to 1/8 (``cp.conv_head32``, ``cp.conv_head16``);
- spatial path: as in that checkpoint, the ResNet's own 1/8 feature (128 channels) stands in for a
  separate three-convolution spatial path (the checkpoint has no weights for one);
- feature fusion (``ffm``): concatenation (256 channels), 1x1 conv, channel attention, residual;
- heads: ``conv_out`` on the fused feature (used for inference) and the auxiliary ``conv_out16`` /
  ``conv_out32`` heads of training, kept so every checkpoint tensor has a home.

Input: RGB scaled to [0, 1], normalised with the ImageNet mean/std, resized to 512 x 512.

The 19 classes map to our mask labels (:data:`talk3d_core.face.regions.LABELS`) as follows:

=============  =====================  ==========================================================
class (index)  our label              why
=============  =====================  ==========================================================
background 0   background 0
skin 1         skin 1
l_brow 2       skin 1                 the contract counts brows as face skin
r_brow 3       skin 1
l_eye 4        eyes 4
r_eye 5        eyes 4
eye_g 6        skin 1                 eyeglasses sit on the face surface
l_ear 7        skin 1                 the contract counts ears as face skin
r_ear 8        skin 1
ear_r 9        skin 1                 earrings: on the ear
nose 10        skin 1
mouth 11       mouth interior 3       CelebAMask-HQ "mouth" is the opening between the lips
u_lip 12       lips 2
l_lip 13       lips 2
neck 14        neck/torso 6
neck_l 15      neck/torso 6           necklace
cloth 16       neck/torso 6
hair 17        hair 5
hat 18         hair 5                 head covering above the face, like hair
=============  =====================  ==========================================================

The weights are not bundled: they are looked up with :func:`talk3d_core.util.weights.require` under the
manifest name :data:`WEIGHTS_NAME`.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from talk3d_core.util.weights import state_dict_problems

#: Manifest entry name of the face-parsing weights and where the entry should install them.
WEIGHTS_NAME = "face_parsing_bisenet"
WEIGHTS_DEST = "face_parsing/79999_iter.pth"

#: CelebAMask-HQ class names in the checkpoint's output order.
CELEBAMASK_CLASSES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip

#: Our label (talk3d_core.face.regions.LABELS) for each CelebAMask-HQ class (see the module docstring).
CELEBAMASK_TO_LABEL = np.array(
    [0, 1, 1, 1, 4, 4, 1, 1, 1, 1, 1, 3, 2, 2, 6, 6, 6, 5, 5],
    dtype=np.uint8,
)

INPUT_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------ modules


class ConvBNReLU(nn.Module):
    """conv (no bias) -> batch norm -> ReLU."""

    def __init__(self, in_chan: int, out_chan: int, ks: int = 3, stride: int = 1, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chan, out_chan, ks, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with a residual (1x1 projection when the shape changes)."""

    def __init__(self, in_chan: int, out_chan: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chan, out_chan, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chan)
        self.conv2 = nn.Conv2d(out_chan, out_chan, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chan)
        self.downsample: nn.Module | None = None
        if in_chan != out_chan or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chan, out_chan, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chan)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """ResNet-18 trunk without the classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinementModule(nn.Module):
    """3x3 ConvBNReLU, then a channel attention from the globally pooled feature."""

    def __init__(self, in_chan: int, out_chan: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chan, out_chan)
        self.conv_atten = nn.Conv2d(out_chan, out_chan, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_chan)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * atten


class ContextPath(nn.Module):
    """ResNet-18 plus attention refinement; returns (1/8 ResNet feature, 1/8 context, 1/16 context)."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinementModule(256, 128)
        self.arm32 = AttentionRefinementModule(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        context = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))
        sum32 = self.arm32(feat32) + context  # broadcasts the 1x1 global context
        up32 = self.conv_head32(F.interpolate(sum32, size=feat16.shape[2:], mode="nearest"))
        sum16 = self.arm16(feat16) + up32
        up16 = self.conv_head16(F.interpolate(sum16, size=feat8.shape[2:], mode="nearest"))
        return feat8, up16, up32


class FeatureFusionModule(nn.Module):
    """Fuses spatial and context features: concat, 1x1 ConvBNReLU, squeeze-excite attention, residual."""

    def __init__(self, in_chan: int, out_chan: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(in_chan, out_chan, ks=1, padding=0)
        self.conv1 = nn.Conv2d(out_chan, out_chan // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_chan // 4, out_chan, 1, bias=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat + feat * atten


class BiSeNetOutput(nn.Module):
    """3x3 ConvBNReLU then a 1x1 classifier (no bias)."""

    def __init__(self, in_chan: int, mid_chan: int, n_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_chan, mid_chan)
        self.conv_out = nn.Conv2d(mid_chan, n_classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face parser; ``forward`` maps (N, 3, H, W) normalised RGB to (N, n_classes, H, W) logits."""

    def __init__(self, n_classes: int = len(CELEBAMASK_CLASSES)) -> None:
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusionModule(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, n_classes)
        # Auxiliary training heads: not used at inference, present to hold the checkpoint's tensors.
        self.conv_out16 = BiSeNetOutput(128, 64, n_classes)
        self.conv_out32 = BiSeNetOutput(128, 64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial, context8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(spatial, context8))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)


# ------------------------------------------------------------------------------------------ loading


def load_bisenet(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> BiSeNet:
    """A :class:`BiSeNet` in eval mode with the weights of ``path`` (a ``79999_iter.pth``-style state dict).

    The file is read with ``torch.load(weights_only=True)``. Every tensor of the file must match a
    parameter or buffer by name and shape, and every parameter must be present; otherwise a
    ValueError names the file and the offending keys. A ``module.`` prefix (DataParallel) is
    stripped; ``num_batches_tracked`` counters may be absent (older PyTorch).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ValueError(f"{path}: BiSeNet weights file not found") from err
    except Exception as err:  # unpickling errors have many types; say which file and why
        raise ValueError(f"{path}: cannot load BiSeNet weights ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path}: expected a state dict of tensors (name -> tensor), got {type(state).__name__}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}

    model = BiSeNet()
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    problems = state_dict_problems(state, expected, optional=optional)
    if problems:
        raise ValueError(f"{path}: not a BiSeNet face-parsing checkpoint: " + "; ".join(problems))
    full = {k: state.get(k, expected[k]) for k in expected}
    model.load_state_dict(full, strict=True)
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------ inference


def parse_classes(model: BiSeNet, crop: np.ndarray, *, input_size: int = INPUT_SIZE) -> np.ndarray:
    """CelebAMask-HQ class per pixel, uint8 (S, S) in 0..18, for an RGB uint8 crop (S, S, 3).

    The crop is resized to ``input_size`` (512 for the released weights), normalised with the
    ImageNet mean/std, and the logits are resized back to S before the arg-max.
    """
    crop = np.asarray(crop)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"crop must be an (S, S, 3) uint8 RGB image, got {crop.shape} {crop.dtype}")
    h, w = crop.shape[:2]
    resized = cv2.resize(crop, (input_size, input_size), interpolation=cv2.INTER_LINEAR)
    x = (resized.astype(np.float32) / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    device = next(model.parameters()).device
    tensor = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)
    with torch.inference_mode():
        logits = model(tensor)
        if (h, w) != (input_size, input_size):
            logits = F.interpolate(
                logits, size=(h, w), mode="bilinear", align_corners=False, antialias=h < input_size
            )
        classes = logits.argmax(dim=1)[0]
    return classes.to(torch.uint8).cpu().numpy()


def parse_labels(model: BiSeNet, crop: np.ndarray, *, input_size: int = INPUT_SIZE) -> np.ndarray:
    """Our mask labels (uint8 (S, S), :data:`talk3d_core.face.regions.LABELS`) from the parser's classes."""
    return CELEBAMASK_TO_LABEL[parse_classes(model, crop, input_size=input_size)]
