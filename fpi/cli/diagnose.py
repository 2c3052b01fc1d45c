"""Placeholder: replaced by the diagnose command module."""
