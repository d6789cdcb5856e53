"""Datasets, augmentation and the three official training streams (COCO pseudo-video, video, prompts)."""
