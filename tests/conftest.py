"""Top-level test configuration: the pytester plugin, for tests that run pytest on a small test file
(tests/regress/test_plugin.py exercises miniguest's own pytest plugin that way)."""
pytest_plugins = ["pytester"]
