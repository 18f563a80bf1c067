from tests.cacheserver.conftest import module_server, serve_factory, served  # noqa: F401 - shared fixtures
