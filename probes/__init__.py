"""Kernel side: one BPF program per ``.bpf.c`` file, and the thin loader that compiles them.

Nothing here formats output; programs fill maps and the collector reads them.
"""
