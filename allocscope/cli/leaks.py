"""``allocscope leaks``: outstanding kernel allocations older than T, by site and caller.

The kernel side of BCC's ``memleak``, sampled: the same capture as ``allocscope lifespan``
(allocscope/cli/lifespan.py), shown as the allocations still live at the end of the window
and older than ``--older``, ordered by their estimated bytes, with the sampled stacks.
"""

from __future__ import annotations

import argparse
from typing import Any

from allocscope.cli.common import add_verb, duration_arg
from allocscope.cli.lifespan import add_capture_options, run_view

DESCRIPTION = """\
Outstanding kernel allocations older than --older (default 1 s, or half the window) at the
end of the window, per allocation site (or exact allocinfo tag) and caller, ordered by their
estimated bytes, with intervals and the sampled stacks: what memleak shows, from a sample
cheap enough for production. Objects allocated before the window are not seen (they were not
tracked): run the window long enough to cover the growth you chase. Frees through paths with
no tracepoint are counted as missed frees, never reported as leaks (see the header lines).
"""

EXAMPLES = """\
  allocscope leaks -d 30                          # what was allocated and not freed in 30 s
  allocscope leaks -d 60 --older 10s -n 5         # only objects older than 10 s
  allocscope leaks -d 30 -p 1234                  # allocated by process 1234
  allocscope leaks -d 20 --workload leak-pipes    # a planted leak: pipes held open
  allocscope leaks -d 30 --json | jq '.payload.rows[0]'
  allocscope leaks -d 30 -o leaks.json
"""


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "leaks",
        "outstanding kernel allocations older than T, by site and caller (sampled memleak)",
        DESCRIPTION,
        EXAMPLES,
        run,
    )
    add_capture_options(p, rows=10)
    p.add_argument(
        "--older",
        type=duration_arg,
        default=None,
        metavar="T",
        help="outstanding allocations older than T (default: 1s, or half the window)",
    )


def run(args: argparse.Namespace) -> int:
    return run_view(args, "leaks")
