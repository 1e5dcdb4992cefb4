"""Every public function and class of the library says what it does (a docstring)."""
import dataclasses
import importlib
import inspect
import pkgutil

import fef_jax


def _public_objects():
  for info in pkgutil.walk_packages(fef_jax.__path__, "fef_jax."):
    module = importlib.import_module(info.name)
    for name, obj in vars(module).items():
      if (not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
          and obj.__module__ == module.__name__):
        yield f"{module.__name__}.{name}", obj


def _own_docstring(obj) -> bool:
  """A docstring written for `obj`: not inherited (`inspect.getdoc` would give a base
  class's) and not the signature `dataclasses` writes for a class without one."""
  if not inspect.isclass(obj):
    return bool(obj.__doc__)
  doc = vars(obj).get("__doc__")
  if not doc:
    return False
  if not dataclasses.is_dataclass(obj):
    return True
  return doc != f"{obj.__name__}{inspect.signature(obj)}".replace(" -> None", "")


def test_every_public_function_and_class_has_a_docstring():
  objects = dict(_public_objects())
  assert len(objects) > 100  # the walk reached the library's modules
  missing = sorted(name for name, obj in objects.items() if not _own_docstring(obj))
  assert not missing, missing


def test_every_module_says_what_it_holds():
  modules = [importlib.import_module(info.name)
             for info in pkgutil.walk_packages(fef_jax.__path__, "fef_jax.")]
  missing = sorted(module.__name__ for module in modules if not module.__doc__)
  assert not missing, missing
