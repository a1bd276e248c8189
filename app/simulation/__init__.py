"""Simulated labelers: scripted preferences that drive the real HTTP API (``rlhf simulate``)."""
