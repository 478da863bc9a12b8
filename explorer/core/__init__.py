"""Headless core of Retrieval Explorer. Nothing under this package may import Qt."""
