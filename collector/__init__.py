"""Data model and logic: allocinfo, kallsyms, attribution, joins, storage.

Everything here is plain Python over plain data; BPF is reached only through
:mod:`allocscope.probes`, and presentation lives in :mod:`allocscope.reports`.
"""
