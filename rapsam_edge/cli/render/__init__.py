"""Renderers of ``rapsam-edge``: typed results in, rich tables and lines out. The only place that formats a
report for a terminal; the commands hand them what a library function returned."""

from .bench import print_bench
from .calibration import print_calibration
from .info import print_info
from .metrics import print_metrics
from .verification import print_verification

__all__ = ["print_bench", "print_calibration", "print_info", "print_metrics", "print_verification"]
