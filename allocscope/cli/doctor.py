"""``allocscope doctor``: what this host can do for allocscope, and how to fix the rest."""

from __future__ import annotations

import argparse
import shutil
from typing import Any

from allocscope.cli.common import add_verb, print_json

DESCRIPTION = """\
Check this host in one screen: kernel release, /proc/allocinfo and its format version,
vm.mem_profiling (value, writable, compressed), BTF, which BPF attach types really load and
attach here (tracepoint, raw tracepoint, kprobe, fentry, perf_event with hardware cycles or
cpu-clock) -- found by trying each with a do-nothing program and detaching at once -- kernel
headers, lockdown, privileges, tracefs and kallsyms. Each line has a status, what it means
for allocscope, and the fix. What was found is kept for the rest of this boot
(/run/allocscope/boot-facts.json), so who-calls does not compile a program for a backend the
kernel refuses; --refresh forgets it first. Exit status 1 when nothing useful can run (no BPF
attach type works and no /proc/allocinfo), else 0.
"""

EXAMPLES = """\
  allocscope doctor                 # the one-screen check (one BPF compile, a few seconds)
  allocscope doctor --json | jq .status
                                    # per-check ok/warn/fail, for scripts and fleet agents
  allocscope doctor --json | jq .facts.attach.fentry
                                    # what exactly happened when fentry was tried
  allocscope doctor --no-bpf        # skip the BPF attach attempts (no root needed)
  allocscope doctor --refresh       # forget this boot's cached verdicts, try again
  allocscope doctor --json | jq .facts.boot_cache.verdicts
                                    # what the live verbs skip at start-up on this boot
"""


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "doctor",
        help="what this host can do, and how to fix what it can't",
        description=DESCRIPTION,
        examples=EXAMPLES,
        func=run,
    )
    p.add_argument("--json", action="store_true", help="print the checks and raw facts as JSON")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="forget this boot's cached verdicts (what who-calls skips) and find them again",
    )
    p.add_argument(
        "--no-bpf",
        action="store_true",
        help="do not try to load BPF programs (attach types reported as not tried)",
    )


def run(args: argparse.Namespace) -> int:
    from allocscope.collector.doctor import run_doctor
    from allocscope.reports.doctor import doctor_json, render_doctor

    report = run_doctor(try_bpf=not args.no_bpf, refresh=args.refresh)
    if args.json:
        print_json(doctor_json(report))
    else:
        width = shutil.get_terminal_size((110, 24)).columns
        print(render_doctor(report, width=width), end="")
    return report.exit_code
