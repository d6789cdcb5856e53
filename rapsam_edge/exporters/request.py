"""What an export is asked (:class:`ExportRequest`) and what a target's export hands its verification
(:class:`ExportResult`): the boundary between :func:`~rapsam_edge.exporters.export.run_export` and the targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..bundle import Artifact
from ..config import ModelConfig
from ..data.coco import list_images
from ..errors import InputError, InputNotFoundError
from ..preprocess import IMAGE_SUFFIXES, InputPolicy
from ..progress import Progress
from .options import OptionsT, TargetOptions


@dataclass
class ExportRequest:
    """One ``rapsam-edge export``. ``options``: the target's typed options (:mod:`.options`; None = its defaults),
    made from the command's flags by :func:`~rapsam_edge.exporters.targets.options_for`. ``progress``: told the
    steps of the export (export, verify, build) and the items of each (graphs and precisions, images); not part
    of what is asked (it is never recorded)."""

    target: str = "onnx"
    config: str | None = None
    checkpoint: Path | None = None
    class_embeddings: Path | None = None
    precision: str | None = None
    imgsz: int | None = None
    out: Path = Path("bundles")
    name: str | None = None
    force: bool = False
    seed: int = 0
    verify_images: list[Path] = field(default_factory=list)
    options: TargetOptions | None = None
    progress: Progress = field(default_factory=Progress, compare=False, repr=False)

    def options_as(self, kind: type[OptionsT]) -> OptionsT:
        """The request's options as the target's own class (its defaults when none were given)."""
        if self.options is None:
            return kind()
        if not isinstance(self.options, kind):
            raise TypeError(f"--target {self.target} takes {kind.__name__}, not {type(self.options).__name__}.")
        return self.options

    def deployment_size(self, config: ModelConfig) -> tuple[int, int]:
        """The deployment canvas (H, W) this export writes: ``--imgsz`` (square), else the config's default. Passed
        to the targets explicitly; the built model is never resized (it takes any canvas)."""
        return (self.imgsz, self.imgsz) if self.imgsz else (int(config.input_size[0]), int(config.input_size[1]))

    def deployment_policy(self, config: ModelConfig) -> InputPolicy:
        """The input policy of the bundle this export writes (its manifest's ``input_policy``)."""
        return InputPolicy.for_model(config, self.deployment_size(config))

    def deployment_config(self, config: ModelConfig) -> ModelConfig:
        """The config the manifest records: the model's, with the deployment canvas as its ``input_size``."""
        return config.replace(input_size=self.deployment_size(config))


@dataclass(frozen=True)
class ExportResult:
    """What a target's export wrote into the (staging) bundle root: its artifacts, not yet registered. A target
    whose verification needs more from the export (CoreML's calibrated w8a8 encoder) returns a subclass, so
    nothing travels from export to verify through module state."""

    artifacts: list[Artifact]


def image_folder(folder: Path, flag: str) -> list[Path]:
    """The images of a folder an export is given (``--verify-images``, ``--calib-images``), sorted, by the package's
    one suffix list (``preprocess.IMAGE_SUFFIXES``); one sentence naming ``flag`` when it is missing, a file, or holds
    none, so nothing is built from an empty set."""
    if not folder.exists():
        raise InputNotFoundError(f"{flag} {folder} does not exist; give a folder of images ({KINDS}).")
    if not folder.is_dir():
        raise InputError(f"{flag} {folder} is a file; give a folder of images ({KINDS}).")
    images = list_images(folder)
    if not images:
        raise InputError(f"{flag} {folder} holds no images ({KINDS}).")
    return images


KINDS = ", ".join(IMAGE_SUFFIXES)
