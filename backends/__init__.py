"""Built-in backends: every module here that defines BACKENDS is registered (harness/registry.py)."""
