"""Ingestion: event files (JSON Lines, optionally gzip) into ``raw.events``."""
