"""Placeholder: replaced by the ingest command module."""
