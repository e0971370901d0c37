"""Test code (a package, so that modules import each other by name)."""
