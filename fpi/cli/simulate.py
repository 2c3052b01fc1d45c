"""Placeholder: replaced by the simulate command module."""
