"""allocscope: context capture and overhead profiling for Linux memory allocation profiling.

The package root. Its three layers are the design card's top-level folders, reached through
committed relative symlinks so that every import name is a real path (``allocscope.probes.loader``
is ``allocscope/probes/loader.py``) and editors, pyright, mypy and import-linter need no set-up:

* :mod:`allocscope.probes` -- everything kernel-facing, BPF C and its typed Python half;
* :mod:`allocscope.collector` -- data model and logic, and the one capture runner;
* :mod:`allocscope.reports` -- presentation only;
* :mod:`allocscope.cli` -- the top layer, the only place that wires capture to presentation.

Data flows one way (probes -> collector -> reports, the CLI above them); ``[tool.importlinter]``
in pyproject.toml states it as contracts and ``scripts/lint`` checks them.
:mod:`allocscope.errors` is a leaf every layer may import.
"""

__version__ = "0.2.0"
__all__ = ["__version__"]
