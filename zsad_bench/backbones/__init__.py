"""Frozen backbones (CLIP, DINOv2, SAM) behind one API, and weight resolution."""
