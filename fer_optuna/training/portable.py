"""Models outside this package: ONNX export, and one classifier interface for .pt and .onnx files.

The ONNX graph takes raw pixels (float32 (N, 1, 48, 48), 0-255, any batch size) and
returns class probabilities; the model's pixel pipeline (histogram equalisation, smoothing
and normalisation) is inside it, so any ONNX runtime gets the same answers as PyTorch.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_optuna.errors import FerOptError
from . import augment, checkpoints, inference, trainer
from .config import PixelPipeline, TrainConfig
from .data import CLASSES, SIDE
from .files import PartialFile

OPSET = 18


class PixelModel(nn.Module):
    """A trained model with its pixel pipeline in front and softmax behind: pixels in, probabilities out."""

    def __init__(self, model: nn.Module, pipeline: PixelPipeline):
        super().__init__()
        self.model, self.pipeline = model, pipeline

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = augment.pixel_pipeline(pixels.round().clamp(0, 255).to(torch.uint8), self.pipeline)
        return self.model(augment.normalize(x.float() / 255.0)).float().softmax(-1)


def onnx_bytes(model: nn.Module, cfg: TrainConfig) -> bytes:
    """The model as an ONNX graph, in memory: pixels in, probabilities out, any batch size."""
    wrapped = PixelModel(model.to(memory_format=torch.contiguous_format), cfg.pixels).eval()
    example = torch.randint(0, 256, (2, 1, SIDE, SIDE), generator=torch.Generator().manual_seed(0)).float()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (example,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["pixels"], output_names=["probabilities"],
                          dynamic_axes={"pixels": {0: "batch"}, "probabilities": {0: "batch"}})
    return buffer.getvalue()


def export_onnx(ckpt: dict, out: Path) -> TrainConfig:
    """Write the checkpoint's model as ONNX, with its config and classes in the file's metadata."""
    import onnx

    model, cfg = checkpoints.model_from_checkpoint(ckpt, torch.device("cpu"))
    graph = onnx.load_from_string(onnx_bytes(model, cfg))
    for key, value in (("fer_optuna.classes", json.dumps(list(checkpoints.checkpoint_classes(ckpt)))), ("fer_optuna.config", json.dumps(cfg.to_dict())),
                       ("fer_optuna.meta", json.dumps(ckpt.get("meta", {}), default=str))):
        graph.metadata_props.add(key=key, value=value)
    with PartialFile(out) as tmp:
        onnx.save(graph, str(tmp))
    return cfg


class Classifier:
    """Class probabilities for uint8 face crops (N, 48, 48), from a .pt checkpoint or an .onnx file."""

    def __init__(self, path: Path, device: str = "auto", precision: str | None = None):
        """precision: fp32 (the default, the same answers on every CPU and through ONNX) or bf16."""
        self.path = Path(path)
        self.bf16 = inference.inference_bf16(precision)
        self.session = None
        if self.path.suffix.lower() == ".onnx":
            import onnxruntime

            if not self.path.is_file():
                raise FerOptError(f"{path}: no such model file")
            try:
                self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own types for a damaged or foreign file
                raise FerOptError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:200]})") from None
            if [i.name for i in self.session.get_inputs()] != ["pixels"]:
                raise FerOptError(f"{path}: not a fer-optuna ONNX model (expected one input named 'pixels')")
            self.name = "onnx"
            meta = self.session.get_modelmeta().custom_metadata_map
            # A graph exported before the classes were written there is FER2013's.
            self.classes = tuple(json.loads(meta["fer_optuna.classes"])) if "fer_optuna.classes" in meta else CLASSES
        else:
            self.device = trainer.resolve_device(device)
            ckpt = checkpoints.read_checkpoint(self.path)
            self.model, self.cfg = checkpoints.model_from_checkpoint(ckpt, self.device)
            self.classes = checkpoints.checkpoint_classes(ckpt)
            self.name = self.cfg.model

    def probs(self, crops: np.ndarray, tta: bool = False) -> np.ndarray:
        if self.session is not None:
            if tta:
                raise FerOptError("TTA (tta=True) needs the .pt checkpoint; the ONNX graph scores the image as it is",
                                  flag="--tta")
            if self.bf16:
                raise FerOptError("bf16 inference (precision='bf16') needs the .pt checkpoint; the ONNX graph runs in fp32",
                                  flag="--precision")
            x = crops[:, None].astype(np.float32)
            return self.session.run(["probabilities"], {"pixels": x})[0]
        x = inference.pixels(crops, self.device, self.cfg.pixels)
        return inference.predict_proba(self.model, x, self.bf16, tta, self.cfg.crop).cpu().numpy()
