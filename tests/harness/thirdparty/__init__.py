"""Backends as a user would write them outside lmspec, loaded by import path."""
