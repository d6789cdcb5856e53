"""Hungarian matcher, losses and the trainer (single process or torchrun DDP)."""
