"""Stride: image inference over HTTP with ONNX Runtime."""

__version__ = "0.1.0"
