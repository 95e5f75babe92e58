"""The report's view model: plain dataclasses the HTML page is drawn from.

:class:`ReportData` is what collector/report_data.py ``gather`` returns and every
reports/html*.py module reads. Separate from the SQL that fills it (report_data.py,
report_store.py, report_fleet.py) so presentation code depends on these types only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from allocscope.collector.containers import CountedTotals
from allocscope.collector.flame_diff import StackDiff
from allocscope.collector.report_fleet import FleetContext, FleetLifespan
from allocscope.collector.result import Result

GROUP_LABEL = "group"
PILOT, CONTROL = "pilot", "control"
OTHER_SUBSYSTEMS = "other subsystems"


@dataclass(slots=True)
class HostRow:
    """One host's latest snapshot, plus how many snapshots we have of it."""

    hostname: str
    labels: dict[str, str]
    kernel_release: str
    mem_profiling: str | None
    snapshots: int
    first_t: float
    last_t: float
    bytes: int  # the plain sum of the latest snapshot's tags
    calls: int
    sites: int
    # the latest snapshot split into containers and objects (collector/containers.py)
    counted: CountedTotals | None = None


@dataclass(slots=True)
class Breakdown:
    """Bytes per subsystem for a list of columns: bars (hosts or snapshots) or time points."""

    columns: list[str]
    times: list[float]
    subsystems: list[str]
    values: dict[str, list[float]]
    note: str = ""


@dataclass(slots=True)
class SiteRow:
    site_key: str
    function: str
    module: str
    subsystem: str
    bytes: int
    calls: int
    hosts: int


@dataclass(slots=True)
class ChangeRow:
    site_key: str
    function: str
    module: str
    subsystem: str
    first_bytes: int
    last_bytes: int
    first_calls: int
    last_calls: int

    @property
    def delta_bytes(self) -> int:
        return self.last_bytes - self.first_bytes


@dataclass(slots=True)
class GroupRow:
    """Bytes per host of one subsystem (or site) in the pilot and control groups.

    Medians lead (one outlier host does not move them); means are kept next to them because
    fleet cost adds up by the mean.
    """

    name: str
    pilot_median: float
    control_median: float
    pilot_mean: float
    control_mean: float
    subsystem: str = ""
    label: str = ""  # what to show for name (a site's file:line; name is its line-free key)

    @property
    def ratio(self) -> float | None:
        return self.pilot_median / self.control_median if self.control_median else None

    @property
    def mean_ratio(self) -> float | None:
        return self.pilot_mean / self.control_mean if self.control_mean else None


@dataclass(slots=True)
class GroupCompare:
    pilot_hosts: list[str]
    control_hosts: list[str]
    mem_profiling: dict[str, dict[str, int]]  # group -> {vm.mem_profiling value: hosts}
    total: GroupRow
    subsystems: list[GroupRow]
    sites: list[GroupRow]


@dataclass(slots=True)
class ResultEntry:
    path: str
    result: Result


@dataclass(slots=True)
class FleetCallers:
    """who-calls results of many hosts for one site, merged (the store's ``callers`` dataset)."""

    site: str
    results: int
    hosts: int
    total_calls: int
    backends: str
    callers: list[dict[str, Any]]
    folded: dict[str, float]


@dataclass(slots=True)
class FleetOverhead:
    """overhead results of many hosts (latest per host), per allocator function."""

    hosts: int
    grouped: bool  # pilot/control columns present
    rows: list[dict[str, Any]]


@dataclass(slots=True)
class ReportData:
    title: str
    generated_at: float
    sources: list[str] = field(default_factory=list)
    hosts: list[HostRow] = field(default_factory=list)
    bars: Breakdown | None = None
    bars_kind: str = ""  # "host" or "snapshot"
    subsystem_totals: list[tuple[str, int]] = field(default_factory=list)
    trend: Breakdown | None = None
    top_sites: list[SiteRow] = field(default_factory=list)
    top_changes: list[ChangeRow] = field(default_factory=list)
    change_hosts: int = 0
    groups: GroupCompare | None = None
    results: list[ResultEntry] = field(default_factory=list)
    diffs: list[StackDiff] = field(default_factory=list)  # report --diff A B
    fleet_callers: list[FleetCallers] = field(default_factory=list)
    fleet_overhead: FleetOverhead | None = None
    fleet_context: FleetContext | None = None
    fleet_lifespan: FleetLifespan | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def has_allocinfo(self) -> bool:
        return bool(self.hosts)
