"""The reference PyTorch RAP-SAM (no mmcv / mmdet / torchvision)."""

from .checkpoint import CheckpointError, LoadReport, load_checkpoint, load_model, save_checkpoint
from .rapsam import RapSam, build_model, parameter_counts

__all__ = ["CheckpointError", "LoadReport", "RapSam", "build_model", "load_checkpoint", "load_model",
           "parameter_counts", "save_checkpoint"]
