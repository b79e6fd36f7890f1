"""The version of ddf_ops: its one source. pyproject.toml reads it (setuptools' static
``attr:``), CMakeLists.txt parses it, ``ddf_ops.__version__`` re-exports it."""

__version__ = "0.1.0"
