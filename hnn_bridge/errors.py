"""Errors raised for bad user input; each message names what was wrong and how to fix it."""


class ArchError(ValueError):
    """A malformed architecture string; the message quotes the offending token."""


class ConfigError(ValueError):
    """An impossible combination of architecture, coder, training method or setting."""
