"""Integrations with the libraries runners already use; each module imports without its framework and
raises ImportError, saying what to install, when used without it."""
