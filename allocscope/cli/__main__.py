"""``python -m allocscope.cli``: the same as the ``allocscope`` command."""

from allocscope.cli import entry

entry()
