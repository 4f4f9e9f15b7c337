"""Batched augmentation and normalisation on the device.

Images stay uint8 on the device; each batch is turned to float here, and every
random transform is drawn for the whole batch at once (one affine warp for
flip, rotation, shift and crop), so no per-sample Python runs in the training step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import PixelPipeline, TrainConfig
from .data import SIDE

# FER2013 Training pixel statistics (0-1 scale), fixed so that checkpoints need no data.
MEAN, STD = 0.5136, 0.3067


def normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


def to_float(x_u8: torch.Tensor) -> torch.Tensor:
    return x_u8.float().div_(255.0)


def equalize(x_u8: torch.Tensor) -> torch.Tensor:
    """Per-image histogram equalisation of uint8 (N, 1, H, W), batched; equal to cv2.equalizeHist.

    Editions of FER2013 differ in contrast (the original pixels against copies that were
    contrast-stretched and equalised); equalising every image makes them look alike to a model.
    Built from gather/scatter/cumsum only, so it exports to ONNX with the model.
    """
    flat = x_u8.flatten(1).long()
    total = flat.shape[1]
    hist = torch.zeros(flat.shape[0], 256, dtype=torch.long, device=flat.device).scatter_add_(1, flat, torch.ones_like(flat))
    cdf = hist.cumsum(1)
    first = torch.where(hist > 0, cdf, total).amin(1, keepdim=True)  # the darkest value's count
    spread = total - first
    # OpenCV maps the darkest value to 0 and scales the rest of the CDF to 255.
    lut = ((cdf - first).double() * 255 / spread.clamp(min=1).double()).round().clamp(0, 255)
    out = torch.where(spread > 0, lut.gather(1, flat), flat.double())  # a one-valued image stays as it is
    return out.to(torch.uint8).view_as(x_u8)


def smooth(x_u8: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian low-pass of uint8 (N, 1, H, W) with edge padding, rounded back to uint8; exports to ONNX."""
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x_u8.device)
    g = torch.exp(-taps**2 / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).view(1, 1, 2 * radius + 1, 2 * radius + 1)
    y = F.conv2d(F.pad(x_u8.float(), (radius,) * 4, mode="replicate"), kernel)
    return y.round().clamp(0, 255).to(torch.uint8)


def pixel_pipeline(x_u8: torch.Tensor, pipeline: PixelPipeline) -> torch.Tensor:
    if pipeline.equalize:
        x_u8 = equalize(x_u8)
    if pipeline.smooth:
        x_u8 = smooth(x_u8, pipeline.smooth)
    return x_u8


def degraded_copies(images: np.ndarray, seed: int) -> np.ndarray:
    """A degraded copy of each uint8 (N, H, W) image, made the way circulating editions of FER2013 were.

    One such edition (the "processed" one) is the original faces through JPEG, a contrast
    stretch saturating at 255 and per-image equalisation, then JPEG again. The VGG trained on the
    original pixels alone scored 3.4 points less on that edition's PublicTest than on the
    original's: equalisation undoes the stretch, but not the saturated highlights or the JPEG
    blocks. Each copy here draws its own stretch (1.0-1.4) and JPEG qualities (70-100). Made
    once per run on the host (0.15 ms an image on an AVX2 core, 4 s for Training); training then
    picks the copy or the original per image, batched on the device.
    """
    import cv2

    rng = np.random.default_rng(seed)
    stretch = rng.uniform(1.0, 1.4, len(images))
    quality = rng.integers(70, 101, (len(images), 2))

    def jpeg(img: np.ndarray, q: int) -> np.ndarray:
        return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(q)])[1], cv2.IMREAD_GRAYSCALE)

    out = np.empty_like(images)
    for i, img in enumerate(images):
        stretched = cv2.convertScaleAbs(jpeg(img, quality[i, 0]), alpha=float(stretch[i]))
        out[i] = jpeg(cv2.equalizeHist(stretched), quality[i, 1])
    return out


def pick_degraded(x_u8: torch.Tensor, degraded_u8: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Each image of a batch replaced by its degraded copy with probability p."""
    pick = torch.rand(x_u8.shape[0], device=x_u8.device, generator=gen) < p
    return torch.where(pick.view(-1, 1, 1, 1), degraded_u8, x_u8)


def _warp(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def augment(x_u8: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, 1, 48, 48) -> augmented, normalised float (B, 1, 48, 48)."""
    x = to_float(x_u8)
    b, dev = x.shape[0], x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(b, device=dev, generator=gen) * (high - low) + low

    flip = torch.where(torch.rand(b, device=dev, generator=gen) < 0.5, -1.0, 1.0) if cfg.flip else None
    if cfg.rotation == 0 and cfg.shift == 0 and cfg.crop == SIDE:
        if flip is not None:
            x = torch.where((flip < 0).view(b, 1, 1, 1), x.flip(-1), x)
    else:
        angle = uniform(-cfg.rotation, cfg.rotation) * (math.pi / 180)
        scale = cfg.crop / SIDE  # a crop of side c, resized back to 48
        room = 1 - scale  # how far the crop window can move, in [-1, 1] coordinates
        tx = uniform(-room, room) + uniform(-2 * cfg.shift, 2 * cfg.shift)
        ty = uniform(-room, room) + uniform(-2 * cfg.shift, 2 * cfg.shift)
        cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
        fx = flip if flip is not None else torch.ones_like(cos)
        theta = torch.stack([torch.stack([cos * fx, -sin, tx], 1), torch.stack([sin * fx, cos, ty], 1)], 1)
        # Without a rescale, nearest sampling (torchvision RandomRotation's default, as in the
        # original) keeps training pixels as sharp as the test pixels; crops need bilinear.
        x = _warp(x, theta, "nearest" if cfg.crop == SIDE else "bilinear")
    x = normalize(x)
    if cfg.erasing > 0:
        x = _random_erasing(x, cfg.erasing, gen)
    return x


def _random_erasing(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Zero (the mean, after normalising) a random rectangle of 2-33% area in a fraction p of images."""
    b, dev = x.shape[0], x.device
    area = (torch.rand(b, device=dev, generator=gen) * 0.31 + 0.02) * SIDE * SIDE
    log_ratio = torch.rand(b, device=dev, generator=gen) * (2 * math.log(3.3)) - math.log(3.3)
    ratio = torch.exp(log_ratio)
    h = torch.sqrt(area * ratio).clamp(1, SIDE)
    w = torch.sqrt(area / ratio).clamp(1, SIDE)
    y0 = torch.rand(b, device=dev, generator=gen) * (SIDE - h)
    x0 = torch.rand(b, device=dev, generator=gen) * (SIDE - w)
    pos = torch.arange(SIDE, device=dev, dtype=x.dtype)
    rows = (pos >= y0[:, None]) & (pos < (y0 + h)[:, None])
    cols = (pos >= x0[:, None]) & (pos < (x0 + w)[:, None])
    apply = torch.rand(b, device=dev, generator=gen) < p
    mask = rows[:, :, None] & cols[:, None, :] & apply[:, None, None]
    return x.masked_fill(mask[:, None], 0.0)


def cutmix_box(lam: float, rng: np.random.Generator, device: torch.device) -> tuple[torch.Tensor, float]:
    """A (48, 48) bool mask covering about 1 - lam of the image, and the exact lam it leaves.

    Drawn on the host: one box per batch, and no device sync to read it back.
    """
    side = math.sqrt(1 - lam) * SIDE
    cy, cx = rng.uniform(0, SIDE, size=2)
    y0, y1 = int(max(cy - side / 2, 0)), int(min(cy + side / 2, SIDE))
    x0, x1 = int(max(cx - side / 2, 0)), int(min(cx + side / 2, SIDE))
    mask = torch.zeros(SIDE, SIDE, dtype=torch.bool, device=device)
    mask[y0:y1, x0:x1] = True
    return mask, 1 - (y1 - y0) * (x1 - x0) / (SIDE * SIDE)


def tta_views(x_u8: torch.Tensor, crop: int = 44) -> torch.Tensor:
    """Test-time views matching how the model was trained, normalised: (V, B, 1, 48, 48).

    A model trained on crops of side `crop` gets 10 views (4 corner crops and the
    centre, each also flipped, resized back to 48); one trained at full size (crop 48)
    gets the image and its mirror, since crops it never saw only hurt it.
    """
    x = to_float(x_u8)
    if crop >= SIDE:
        return torch.stack([normalize(x), normalize(x.flip(-1))])
    b = x.shape[0]
    s = crop / SIDE
    room = 1 - s
    views = []
    for flip in (1.0, -1.0):
        for tx, ty in ((0, 0), (-room, -room), (room, -room), (-room, room), (room, room)):
            theta = torch.tensor([[s * flip, 0, tx], [0, s, ty]], device=x.device, dtype=x.dtype)
            views.append(normalize(_warp(x, theta.expand(b, 2, 3))))
    return torch.stack(views)
