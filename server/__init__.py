"""Sensorcast: a self-hosted real-time push server."""

__version__ = "0.1.0"
