"""Task metrics: panoptic quality, interactive mIoU / NoC, YouTube-VIS AP / AR."""
