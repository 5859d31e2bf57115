"""Diffusion tests. A package, so that test_model.py here and tests/watermark/test_model.py import under different
names (pytest's default prepend import mode needs unique basenames otherwise)."""
