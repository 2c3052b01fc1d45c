"""Placeholder: replaced by the train command module."""
