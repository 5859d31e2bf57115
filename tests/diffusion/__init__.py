"""Diffusion tests."""
