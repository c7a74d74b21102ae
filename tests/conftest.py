pytest_plugins = ["tests.fixtures.prom"]
