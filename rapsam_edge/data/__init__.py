"""Datasets, augmentation and the three official training streams (COCO pseudo-video, video, prompts)."""

from .coco import (
    AnnotationFileError,
    AnnotationFileNotFoundError,
    CocoInstances,
    CocoPanoptic,
    Record,
    list_images,
    read_split,
    read_splits,
    things_panoptic,
)
from .masks import MaskStack
from .prompts import clicks_to_boxes, interior_click, sample_clicks
from .sample import TrainSample
from .streams import CocoPseudoVideoStream, MixedStream, PromptStream, VideoClipStream
from .transforms import AugmentedFrame, AugParams, ClipTransform, LargeScaleJitter
from .video import VideoRecord, YTVISDataset

__all__ = [
    "AnnotationFileError", "AnnotationFileNotFoundError", "AugParams", "AugmentedFrame", "ClipTransform",
    "CocoInstances", "CocoPanoptic", "CocoPseudoVideoStream", "LargeScaleJitter", "MaskStack", "MixedStream",
    "PromptStream", "Record", "TrainSample", "VideoClipStream", "VideoRecord", "YTVISDataset", "clicks_to_boxes",
    "interior_click", "list_images", "read_split", "read_splits", "sample_clicks", "things_panoptic",
]
