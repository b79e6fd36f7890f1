"""Every public object has a docstring example, and every example runs (doctest).

Public, defined here and only here (docs/design.md, section 8, points to this file):

- the package ``ddf_ops`` and every name in its ``__all__``;
- every module among those, and ``ddf_ops.timm`` (public, but timm is optional, so
  ``import ddf_ops`` leaves it out): the module itself, and its public names, which are its
  ``__all__`` where it defines one (``ddf_ops.nn``, ``ddf_ops.models``; ``ddf_ops.timm``'s is
  filled by timm's ``register_model``), else the functions and classes defined in the module
  whose names do not start with "_" (``ddf_ops.onnx``, ``ddf_ops.reference``).

So a new name in an ``__all__`` (or a new function in a module without one) is a new test case
that fails until its docstring has an example. Not public: the private modules
(``ddf_ops._library``, ``ddf_ops.nn.ddf_pack``, ...; what they export is covered under its
public name), ``ddf_ops.flops`` (imported for its registrations, not in ``__all__``) and the
demo.

One test case per object: it fails when the object's own docstring has no ``>>>`` example,
or with doctest's report when an example does not print what its docstring shows. A class's
methods' examples, if any, run in its case. Examples run in fresh globals (they import what
they use, as a reader copying them into a session would) after ``torch.manual_seed(0)``, with
NORMALIZE_WHITESPACE and ELLIPSIS; they print shapes, counts and booleans, never raw random
values. The objects whose examples need an optional test dependency (onnx, timm) import it
with ``import_test_dependency`` and carry the ``integration`` marker, as tests/test_onnx.py
and tests/test_timm.py do.
"""

import doctest
import importlib
import inspect
import io

import pytest
import torch

import ddf_ops
from conftest import import_test_dependency

OPTION_FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS

# Public modules that `import ddf_ops` does not import, with the test dependencies they need.
OPTIONAL_MODULES = {"ddf_ops.timm": ("timm",)}
# Objects whose examples need test dependencies (everything in OPTIONAL_MODULES does too).
ONNX = ("onnx", "onnxscript", "onnxruntime")  # export, and run the result with onnxruntime
NEEDS = {"ddf_ops.onnx": ONNX, "ddf_ops.onnx.export": ONNX}


def public_names(module) -> list[str]:
    """A public module's public names: its ``__all__``, else the functions and classes it
    defines whose names do not start with "_"."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == module.__name__
    ]


def public_objects() -> dict[str, tuple[object, tuple[str, ...]]]:
    """Every public object by the name the public reaches it by, with the test dependencies
    its examples need. An optional module that does not import is listed alone, as None: its
    case imports the dependency (a skip, or an error under DDF_REQUIRE_TEST_DEPS=1), then the
    module (an error if it still fails)."""
    found: dict[str, tuple[object, tuple[str, ...]]] = {}
    seen: set[int] = set()

    def visit(name, value, needs):
        if id(value) in seen:  # reached under two public names: tested under the first
            return
        seen.add(id(value))
        found[name] = (value, tuple(dict.fromkeys(needs + NEEDS.get(name, ()))))
        if inspect.ismodule(value):
            for attr in public_names(value):
                visit(f"{name}.{attr}", getattr(value, attr), needs)

    visit("ddf_ops", ddf_ops, ())
    for name, needs in OPTIONAL_MODULES.items():
        try:
            module = importlib.import_module(name)
        except ImportError:
            found[name] = (None, needs)
        else:
            visit(name, module, needs)
    return found


PUBLIC = public_objects()


def test_public_objects_are_collected():
    """The collection itself: the package, its public modules and a name from each level."""
    for name in ("ddf_ops", "ddf_ops.ddf", "ddf_ops.nn", "ddf_ops.nn.DDFPack", "ddf_ops.models.ResNet"):
        assert name in PUBLIC
    assert "ddf_ops.reference.ddf_inside_taps" in PUBLIC  # a module without __all__
    assert "ddf_ops.onnx.translation_table" in PUBLIC and "ddf_ops.onnx._translate_ddf" not in PUBLIC
    assert "ddf_ops.timm" in PUBLIC
    assert not any(name.startswith("ddf_ops.flops") for name in PUBLIC)


def case(name: str, needs: tuple[str, ...]):
    return pytest.param(name, id=name, marks=[pytest.mark.integration] if needs else [])


@pytest.mark.parametrize("name", [case(name, needs) for name, (_, needs) in PUBLIC.items()])
def test_examples(name):
    value, needs = PUBLIC[name]
    for dependency in needs:
        import_test_dependency(dependency)
    if value is None:  # an optional module whose dependency was missing at collection
        value = importlib.import_module(name)
    finder = doctest.DocTestFinder(recurse=not inspect.ismodule(value), exclude_empty=False)
    tests = finder.find(value, name, globs={"__name__": "__main__"})
    own = [test for test in tests if test.name == name]
    assert own and own[0].examples, (
        f"{name} has no example in its docstring: add an 'Example:' section with >>> lines "
        "and their output (tests/test_doctests.py says what is public)"
    )
    runner = doctest.DocTestRunner(optionflags=OPTION_FLAGS)
    report = io.StringIO()
    for test in sorted(tests, key=lambda test: test.name):
        torch.manual_seed(0)
        runner.run(test, out=report.write)
    if runner.failures:
        failed = f"{runner.failures} of {runner.tries} examples of {name} failed"
        pytest.fail(f"{failed}:\n{report.getvalue()}", pytrace=False)
