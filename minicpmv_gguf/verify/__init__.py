"""Parity of built GGUFs with the PyTorch reference: `verify`, and the reference helpers the tests share."""

from .checks import Check, VerifyReport, verify

__all__ = ["Check", "VerifyReport", "verify"]
