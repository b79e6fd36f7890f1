"""The test tiers' own machinery (tests/conftest.py, pyproject.toml): strict test dependencies."""

import pytest

import conftest


def test_missing_dependency_skips_or_fails(monkeypatch):
    name = "ddf_ops_no_such_test_dependency"
    monkeypatch.setattr(conftest, "REQUIRE_TEST_DEPS", False)
    with pytest.raises(pytest.skip.Exception):
        conftest.import_test_dependency(name)
    # Under `make test` (DDF_REQUIRE_TEST_DEPS=1) the same import is an error, not a skip.
    monkeypatch.setattr(conftest, "REQUIRE_TEST_DEPS", True)
    with pytest.raises(ModuleNotFoundError):
        conftest.import_test_dependency(name)
    assert conftest.import_test_dependency("torch").__name__ == "torch"


def test_missing_capability_skips_or_fails(monkeypatch):
    monkeypatch.setattr(conftest, "REQUIRE_TEST_DEPS", False)
    assert conftest.require_test_capability(False, "x").args[0] is True  # skipif(True)
    monkeypatch.setattr(conftest, "REQUIRE_TEST_DEPS", True)
    assert conftest.require_test_capability(False, "x").args[0] is False
    assert conftest.require_test_capability(True, "x").args[0] is False
