"""The experiments' persistent compilation cache: where it goes and how it is turned off."""
import jax
import pytest

from fef_jax import compile_cache


@pytest.fixture(name="unset_cache_dir")
def _unset_cache_dir():
  """JAX without a cache directory for the test (the suite's own is put back after)."""
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", None)
  yield
  jax.config.update("jax_compilation_cache_dir", before)


def test_a_directory_jax_already_has_is_kept(tmp_path, monkeypatch):
  before = jax.config.jax_compilation_cache_dir
  assert before  # tests/conftest.py sets one
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "other"))
  assert compile_cache.enable() == before
  assert jax.config.jax_compilation_cache_dir == before
  assert not (tmp_path / "other").exists()


def test_the_environment_variable_names_the_directory(tmp_path, monkeypatch, unset_cache_dir):
  del unset_cache_dir
  target = tmp_path / "a" / "b"
  monkeypatch.setenv(compile_cache.ENV_VAR, str(target))
  assert compile_cache.enable() == str(target)
  assert jax.config.jax_compilation_cache_dir == str(target)
  assert target.is_dir()


def test_the_default_directory_is_under_home(tmp_path, monkeypatch, unset_cache_dir):
  del unset_cache_dir
  monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert compile_cache.enable() == str(tmp_path / ".cache" / "fef_jax" / "xla")
  assert (tmp_path / ".cache" / "fef_jax" / "xla").is_dir()


def test_an_empty_variable_leaves_the_cache_off(monkeypatch, unset_cache_dir):
  del unset_cache_dir
  monkeypatch.setenv(compile_cache.ENV_VAR, "")
  assert compile_cache.enable() is None
  assert not jax.config.jax_compilation_cache_dir
