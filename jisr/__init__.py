"""Jisr ("bridge"): a school assistant and outreach engine for Moroccan families abroad."""

__version__ = "0.1.0"
