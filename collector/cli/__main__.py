"""``python -m allocscope.collector.cli``: the same as the ``allocscope`` command."""

from allocscope.collector.cli import entry

entry()
