"""``python -m rapsam_edge.cli`` (and ``torchrun ... -m rapsam_edge.cli train``): the same app as the script."""

from .commands import main

if __name__ == "__main__":  # pragma: no cover
    main()
