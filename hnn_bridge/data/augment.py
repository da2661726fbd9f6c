"""Random crop-and-rotate augmentation of training batches (Fang et al.'s MNIST setup).

The paper (Muramatsu & Yu, 2021) names no augmentation. Fang et al.'s reference code
(Snow-Crash/snn-iir, ``snn_mlp_1.yaml``, ``use_transform: True``) trains MNIST with
``RandomApply([crop, rotate, Compose([crop, rotate])], p=0.5)``: with probability 0.5 an
image goes through a ``RandomResizedCrop(28, scale=(0.85, 1), ratio=(3/4, 4/3))`` and a
``RandomRotation(15)`` twice in a row (``RandomApply`` applies every transform of its
list), otherwise it is left as it is. `CropRotate` draws the same random parameters
(torchvision's rules: ten tries at a crop box of integer size that fits, else the whole
image; an angle uniform in [-15, 15] degrees) and applies them as one affine map.

Departures from torchvision, both deliberate: the four steps are composed into a single
``grid_sample`` (bilinear, zeros outside) instead of resampling four times, so the image
is blurred once, not four times; and the rotation is bilinear (torchvision's default for
``RandomRotation`` is nearest). Images that are not augmented pass through bit for bit.

Parameters are drawn per image from a generator of ``(seed, epoch)`` only
(`TensorBatches`), so a resumed run and a DDP run of any world size see exactly the
images of an uninterrupted single-process run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AUGMENTS", "CropRotate", "augmentation"]

#: names of ``Settings.augment``; "none" adds nothing
AUGMENTS = ("none", "crop-rotate")
# torchvision's RandomResizedCrop tries this many boxes before it falls back
_CROP_TRIES = 10
# draws per crop: (area, ratio) per try, then the box's corner (top, left)
_CROP_DRAWS = 2 * _CROP_TRIES + 2


@dataclass(frozen=True)
class CropRotate:
    """With probability ``p``: ``passes`` x (random resized crop, then random rotation).

    Args:
        p: probability that an image is augmented at all.
        scale: range of the crop box's area, as a fraction of the image's.
        ratio: range of the box's aspect ratio w/h (drawn log-uniformly).
        degrees: the angle is uniform in [-degrees, degrees]; positive is counter-clockwise.
        passes: how many (crop, rotate) pairs are chained (2 in Fang et al.'s code).
    """

    p: float = 0.5
    scale: tuple[float, float] = (0.85, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    degrees: float = 15.0
    passes: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"CropRotate: p must be in [0, 1], got {self.p!r}")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"CropRotate: scale must satisfy 0 < low <= high <= 1, got {self.scale!r}")
        if not 0.0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"CropRotate: ratio must satisfy 0 < low <= high, got {self.ratio!r}")
        if self.degrees < 0 or self.passes < 1:
            raise ValueError(
                f"CropRotate: need degrees >= 0 and passes >= 1, got {self.degrees!r}, {self.passes!r}"
            )

    @property
    def width(self) -> int:
        """Random numbers per image: the apply draw, then per pass the crop's draws and the angle."""
        return 1 + self.passes * (_CROP_DRAWS + 1)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform [0, 1) numbers ``[n, width]`` (float64) for ``n`` images."""
        return torch.rand((n, self.width), generator=generator, dtype=torch.float64)

    def matrices(self, u: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(applied ``[n]`` bool, ``theta [n, 2, 3]`` float64) from the draws ``u`` of `draw`.

        ``theta`` maps an output pixel's normalised coordinates to the input's
        (``F.affine_grid``, ``align_corners=False``): the product of each step's map, first
        step on the left, as each step samples the output of the one before it."""
        n = u.shape[0]
        applied = u[:, 0] < self.p
        total = torch.eye(3, dtype=torch.float64).expand(n, 3, 3).clone()
        col = 1
        for _ in range(self.passes):
            total = total @ self._crop(u[:, col : col + _CROP_DRAWS], height, width)
            col += _CROP_DRAWS
            total = total @ self._rotation(u[:, col], height, width)
            col += 1
        return applied, total[:, :2, :]

    def _crop(self, u: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Maps ``[n, 3, 3]`` of torchvision's RandomResizedCrop box, resized to the image."""
        n = u.shape[0]
        area = height * width
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        tries = u[:, : 2 * _CROP_TRIES].view(n, _CROP_TRIES, 2)
        target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * tries[..., 0])
        aspect = torch.exp(lo + (hi - lo) * tries[..., 1])
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
        first = fits.float().argmax(1)
        found = fits.any(1)
        fallback_w, fallback_h = self._fallback_box(height, width)
        box_w = torch.where(
            found, w.gather(1, first[:, None])[:, 0], torch.tensor(fallback_w, dtype=torch.float64)
        )
        box_h = torch.where(
            found, h.gather(1, first[:, None])[:, 0], torch.tensor(fallback_h, dtype=torch.float64)
        )
        # top-left corner: an integer in 0 .. size - box (torch.randint's range in
        # torchvision); the fallback box is centred, as there
        top = torch.where(
            found, torch.floor(u[:, -2] * (height - box_h + 1)), torch.floor((height - box_h) / 2)
        )
        left = torch.where(
            found, torch.floor(u[:, -1] * (width - box_w + 1)), torch.floor((width - box_w) / 2)
        )
        m = torch.zeros(n, 3, 3, dtype=torch.float64)
        m[:, 0, 0] = box_w / width
        m[:, 0, 2] = (2 * left + box_w) / width - 1
        m[:, 1, 1] = box_h / height
        m[:, 1, 2] = (2 * top + box_h) / height - 1
        m[:, 2, 2] = 1
        return m

    def _fallback_box(self, height: int, width: int) -> tuple[float, float]:
        """torchvision's box (w, h) when no try fits: the whole image, cut to the nearest
        allowed aspect ratio."""
        own = width / height
        if own < self.ratio[0]:
            return float(width), float(round(width / self.ratio[0]))
        if own > self.ratio[1]:
            return float(round(height * self.ratio[1])), float(height)
        return float(width), float(height)

    def _rotation(self, u: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Maps ``[n, 3, 3]`` of a rotation about the image centre by U(-degrees, degrees)."""
        angle = torch.deg2rad((2 * u - 1) * self.degrees)
        c, s = torch.cos(angle), torch.sin(angle)
        # in pixel units (x right, y down) the output pixel v samples the input at R(-angle) v,
        # which turns the picture counter-clockwise as shown; normalised x = px / (W/2)
        m = torch.zeros(u.shape[0], 3, 3, dtype=torch.float64)
        m[:, 0, 0] = c
        m[:, 0, 1] = -s * height / width
        m[:, 1, 0] = s * width / height
        m[:, 1, 1] = c
        m[:, 2, 2] = 1
        return m

    def apply(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` float with the augmentation of draws ``u [B, width]`` applied."""
        applied, theta = self.matrices(u, x.shape[-2], x.shape[-1])
        if not bool(applied.any()):
            return x
        rows = applied.nonzero()[:, 0].to(x.device)
        theta = theta[applied].to(x.device, x.dtype)
        part = x.index_select(0, rows)
        grid = F.affine_grid(theta, list(part.shape), align_corners=False)
        out = x.clone()
        out[rows] = F.grid_sample(part, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out


def augmentation(name: str) -> CropRotate | None:
    """The augmentation called ``name`` in `AUGMENTS` (None for ``"none"``)."""
    if name == "none":
        return None
    if name == "crop-rotate":
        return CropRotate()
    raise ValueError(f"unknown augmentation {name!r}; known: {', '.join(map(repr, AUGMENTS))}")
