"""Command-line entry points and bundles."""
