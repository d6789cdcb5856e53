"""The ``rapsam-edge`` command line (``rapsam_edge.cli:app``): one module per command over library functions that
return data, renderers apart (:mod:`.render`), and the shared app and error policy (:mod:`.common`)."""

from .commands import app, main

__all__ = ["app", "main"]
