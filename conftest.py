"""Loads the harness's pytest plugin (backend x device parametrization, --device)."""

pytest_plugins = ["harness.pytest_plugin"]
