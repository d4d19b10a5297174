"""Built-in plugins; each module registers through the same hooks as third-party plugins."""
