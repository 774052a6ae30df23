"""Integrations with the libraries runners already use; each module imports without its library."""
