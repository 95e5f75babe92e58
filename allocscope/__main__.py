"""``python -m allocscope``: the same entry point as the ``allocscope`` console script."""

from allocscope.cli import entry

if __name__ == "__main__":
    entry()
