"""Retrieval Explorer: see, on your own images, whether captions improve global image retrieval."""

__version__ = "0.1.0"
