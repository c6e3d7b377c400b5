"""Ingest transports: readings that arrive other than over HTTP (MQTT)."""
