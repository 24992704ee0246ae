"""Unit tests use no database and start no process: a test that asks for either belongs in
tests/integration/ (see tests/README.md)."""

import pytest

NOT_IN_UNIT_TESTS = {
    "db", "transactional_db", "django_db_setup", "admin_client", "admin_user", "django_user_model", "live_server",
    "start_dispatchers", "start_api",
}


@pytest.fixture(autouse=True)
def _unit_tests_use_no_database_and_no_process(request):
    asked = sorted(NOT_IN_UNIT_TESTS & set(request.fixturenames))
    if asked or request.node.get_closest_marker("django_db"):
        pytest.fail(f"a unit test uses {', '.join(asked) or 'the django_db marker'}: move it to tests/integration/")
