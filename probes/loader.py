"""The one probe loader: compile a ``.bpf.c`` with ``-D`` settings, attach, always detach.

Every capture goes through :class:`Probe`:

* it compiles ``probes/<name>.bpf.c`` against the header tree :func:`resolve_headers` picked,
  passing ``-DALLOCSCOPE_HEADERS_MATCH=0|1`` plus the caller's defines;
* it attaches by backend (fentry, kprobe, raw tracepoint, tracepoint, perf event) and records
  what it attached, so the output can say which backend ran;
* it detaches on every exit path: ``with Probe(...)``, ``close()``, interpreter exit, and
  SIGTERM (turned into :class:`KeyboardInterrupt` by :func:`interruptible`, so the same
  ``except KeyboardInterrupt`` path that handles Ctrl-C writes partial results).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from types import FrameType, TracebackType
from typing import Any

from allocscope.errors import CapabilityError
from allocscope.probes.headers import HeaderTree, resolve_headers

BACKENDS = ("fentry", "kprobe", "raw_tracepoint", "tracepoint", "perf_event")


def program_path(name: str) -> str:
    """Path of ``<name>.bpf.c`` shipped in this package."""
    path = resources.files("allocscope.probes").joinpath(f"{name}.bpf.c")
    if not path.is_file():
        raise FileNotFoundError(f"no BPF program {name}.bpf.c in allocscope.probes")
    return str(path)


def import_bcc() -> Any:
    """Import Debian's BCC, or explain how to get it (never the unrelated PyPI ``bcc``)."""
    try:
        import bcc
    except ImportError:
        raise CapabilityError(
            "BCC is not importable: apt-get install python3-bpfcc, and use a venv made with "
            "--system-site-packages (./scripts/setup does both)"
        ) from None
    if not hasattr(bcc, "BPF"):
        raise CapabilityError(
            f"the 'bcc' module at {bcc.__file__} is not BCC (the PyPI package "
            "named bcc is unrelated): pip uninstall bcc"
        )
    return bcc


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Send fd 2 (where clang, libbcc and libbpf print) to a buffer; the yielded list gets
    the captured text as its only item on exit.

    Compiling against kernel headers prints pages of harmless clang warnings, and an expected
    failure (fentry refused, no PMU) prints libbpf chatter; neither belongs on the user's
    screen. Callers put the captured text into their error message when it matters.
    ``ALLOCSCOPE_BPF_DEBUG=1`` lets it through, to see a failing compile in full.
    """
    out: list[str] = []
    if os.environ.get("ALLOCSCOPE_BPF_DEBUG") == "1":
        yield out
        out.append("")
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def last_error_lines(text: str, n: int = 2) -> str:
    """The last ``n`` meaningful lines of captured C-library output (for one-line errors)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "warning" not in ln]
    errors = [ln for ln in lines if "error:" in ln]  # clang's own diagnosis, when there is one
    return " | ".join((errors or lines)[-n:])[:300]


# Failures with a known cause: (every needle present, short phrase, full-text replacement).
# BCC words EPERM from the kernel as "Need super-user privileges", which misleads a user who
# IS root (lockdown, a refused fentry target, a missing capability): its text is replaced.
_KNOWN_CAUSES: tuple[tuple[tuple[str, ...], str, str | None], ...] = (
    (("kprobe_events", "No such file"), "no kprobe_events", None),
    (("not traceable",), "function not traceable", None),
    (("super-user",), "EPERM from the kernel", "the kernel refused the program (EPERM)"),
    (("Operation not permitted",), "EPERM from the kernel", None),
    (("refused the program (EPERM)",), "EPERM from the kernel", None),
    (("perf_event_open failed: No such file",), "no such PMU event", None),
)


def error_line(
    error: BaseException | str, captured: str = "", *, short: bool = False, limit: int = 300
) -> str:
    """BCC's error text (plus what libbcc/clang printed, ``captured``) as one line.

    The full form is the exception's first line with ``b'...'`` quoting removed, then the
    telling part of ``captured`` in parentheses when it adds something; a known cause (see
    ``_KNOWN_CAUSES``) whose BCC wording misleads is replaced by a plain one. ``short=True``
    gives a table cell: the known cause's phrase, else the text before its first `` (``,
    at most 60 characters.
    """
    text = str(error) if isinstance(error, str) else str(error) or type(error).__name__
    lines = [ln.strip() for ln in text.replace("b'", "'").splitlines() if ln.strip()]
    msg = lines[0] if lines else ""
    detail = last_error_lines(captured) if captured else ""
    whole = f"{msg} {detail}"
    for needles, phrase, replacement in _KNOWN_CAUSES:
        if all(n in whole for n in needles):
            if short:
                return phrase
            if replacement is not None:
                return replacement
            break
    if short:
        return msg if msg.startswith("not tried") else msg.split(" (")[0][:60]
    if detail and detail not in msg:
        msg = f"{msg} ({detail})"
    return msg[:limit]


def _no_autoload_class(bcc: Any) -> Any:
    """A ``bcc.BPF`` subclass that attaches nothing at construction.

    BCC attaches ``kfunc__``/``kprobe__``/``tracepoint__`` functions while loading and raises
    from the constructor when one fails (fentry refused), losing the whole compile. With
    ``Probe(..., autoload=False)`` every attach is an explicit, catchable attempt.
    """

    class NoAutoloadBPF(bcc.BPF):  # type: ignore[misc]
        def _trace_autoload(self) -> None:
            return None

    return NoAutoloadBPF


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _format_define(key: str, value: int | str | bool) -> str:
    if isinstance(value, bool):
        value = int(value)
    return f"-D{key}={value}"


@dataclass(slots=True)
class Attachment:
    backend: str
    target: str
    fn_name: str


@dataclass
class Probe:
    """A compiled BPF program and what it is attached to. Use as a context manager."""

    name: str
    defines: dict[str, int | str | bool] = field(default_factory=dict)
    headers: HeaderTree | None = None
    attachments: list[Attachment] = field(default_factory=list)
    compile_seconds: float = 0.0
    autoload: bool = True
    _bpf: Any = None

    def __post_init__(self) -> None:
        bcc = import_bcc()
        if os.geteuid() != 0:
            raise CapabilityError("loading BPF programs needs root (or CAP_BPF+CAP_PERFMON)")
        self.headers = self.headers or resolve_headers()
        if self.headers.kind == "none":
            raise CapabilityError(self.headers.note)
        src = program_path(self.name)
        # -I the package dir: programs share allocscope.bpf.h.
        cflags = [f"-I{os.path.dirname(src)}"]
        cflags += [_format_define("ALLOCSCOPE_HEADERS_MATCH", self.headers.matches)]
        cflags += [_format_define(k, v) for k, v in sorted(self.defines.items())]
        saved = {k: os.environ.get(k) for k in ("BCC_KERNEL_SOURCE",)}
        os.environ.update(self.headers.environment())
        bpf_class = bcc.BPF if self.autoload else _no_autoload_class(bcc)
        t0 = time.monotonic()
        chatter: list[str] = []
        try:
            with captured_stderr() as chatter:
                self._bpf = bpf_class(src_file=src.encode(), cflags=cflags)
        except Exception as e:  # BCC raises bare Exception on compile/load failure
            why = error_line(e, chatter[0] if chatter else "")
            raise CapabilityError(
                f"BPF program {self.name}.bpf.c failed to load: {why} (run `allocscope doctor`)"
            ) from None
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        self.compile_seconds = time.monotonic() - t0
        _LIVE.add(self)
        self._record_autoattached()

    def _record_autoattached(self) -> None:
        """BCC attaches functions named ``tracepoint__*``, ``raw_tracepoint__*``, ``kprobe__*``
        and ``kfunc__*`` by itself at load; record them so ``attachments`` tells the whole
        truth. Programs that choose a backend at run time name their functions plainly and
        attach explicitly.
        """
        b = self._bpf
        for tp in getattr(b, "raw_tracepoint_fds", {}):
            self.attachments.append(Attachment("raw_tracepoint", _text(tp), "(auto)"))
        for tp in getattr(b, "tracepoint_fds", {}):
            self.attachments.append(Attachment("tracepoint", _text(tp), "(auto)"))
        for ev in getattr(b, "kprobe_fds", {}):
            self.attachments.append(Attachment("kprobe", _text(ev), "(auto)"))
        for backend, fds, prefix in (
            ("fentry", getattr(b, "kfunc_entry_fds", {}), "kfunc__"),
            ("fexit", getattr(b, "kfunc_exit_fds", {}), "kretfunc__"),
        ):
            for fn in fds:
                name = _text(fn)
                self.attachments.append(Attachment(backend, name.removeprefix(prefix), name))

    @property
    def bpf(self) -> Any:
        if self._bpf is None:
            raise RuntimeError(f"probe {self.name} is closed")
        return self._bpf

    def __getitem__(self, map_name: str) -> Any:
        return self.bpf[map_name.encode()]

    # --- attaching, one method per backend -------------------------------------------------
    def attach_raw_tracepoint(self, tp: str, fn_name: str) -> None:
        self.bpf.attach_raw_tracepoint(tp=tp.encode(), fn_name=fn_name.encode())
        self.attachments.append(Attachment("raw_tracepoint", tp, fn_name))

    def attach_tracepoint(self, tp: str, fn_name: str) -> None:
        self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn_name.encode())
        self.attachments.append(Attachment("tracepoint", tp, fn_name))

    def attach_kprobe(self, function: str, fn_name: str, *, ret: bool = False) -> None:
        if ret:
            self.bpf.attach_kretprobe(event=function.encode(), fn_name=fn_name.encode())
        else:
            self.bpf.attach_kprobe(event=function.encode(), fn_name=fn_name.encode())
        self.attachments.append(Attachment("kretprobe" if ret else "kprobe", function, fn_name))

    def attach_fentry(self, fn_name: str, target: str) -> None:
        """Attach a plainly named fentry program (``KFUNC_PROBE`` ones BCC attaches at load,
        and :meth:`_record_autoattached` has already recorded them)."""
        if any(a.fn_name == fn_name for a in self.attachments):
            return
        self.bpf.attach_kfunc(fn_name=fn_name.encode())
        self.attachments.append(Attachment("fentry", target, fn_name))

    def attach_perf_event(
        self,
        ev_type: int,
        ev_config: int,
        fn_name: str,
        *,
        sample_freq: int = 0,
        sample_period: int = 0,
        cpu: int = -1,
    ) -> None:
        with captured_stderr():  # libbcc prints perf_event_open's failure itself
            self.bpf.attach_perf_event(
                ev_type=ev_type,
                ev_config=ev_config,
                fn_name=fn_name.encode(),
                sample_freq=sample_freq,
                sample_period=sample_period,
                cpu=cpu,
            )
        self.attachments.append(Attachment("perf_event", f"{ev_type}:{ev_config}", fn_name))

    def preload(self, fn_name: str, backend: str) -> None:
        """Load (verify) one program now, without attaching it. BCC loads lazily at attach;
        a probe whose hooks allocate (the verifier kmallocs) preloads every program first so
        the verifier's allocations do not land in the maps of hooks already attached."""
        b = self.bpf
        kinds = {"raw_tracepoint": b.RAW_TRACEPOINT, "tracepoint": b.TRACEPOINT, "kprobe": b.KPROBE}
        if backend not in kinds:
            raise ValueError(f"preload: no program type for backend {backend!r}")
        b.load_func(fn_name.encode(), kinds[backend])

    def detach(self) -> None:
        """Stop every tracepoint, raw tracepoint and kprobe hook but keep the maps, so a window
        can end before its maps are read. ``attachments`` stays the record of what ran;
        :meth:`close` detaches whatever else is left."""
        b = self.bpf
        for a in self.attachments:
            if a.backend == "raw_tracepoint":
                b.detach_raw_tracepoint(tp=a.target.encode())
            elif a.backend == "tracepoint":
                b.detach_tracepoint(tp=a.target.encode())
            elif a.backend in ("kprobe", "kretprobe"):
                detach = b.detach_kretprobe if a.backend == "kretprobe" else b.detach_kprobe
                fn = None if a.fn_name == "(auto)" else a.fn_name.encode()
                detach(event=a.target.encode(), fn_name=fn)

    # --- detaching (the program stays loaded: a benchmark re-attaches without recompiling) --
    def detach_raw_tracepoint(self, tp: str) -> None:
        self.bpf.detach_raw_tracepoint(tp=tp.encode())
        self._forget("raw_tracepoint", tp)

    def detach_perf_event(self, ev_type: int, ev_config: int) -> None:
        self.bpf.detach_perf_event(ev_type=ev_type, ev_config=ev_config)
        self._forget("perf_event", f"{ev_type}:{ev_config}")

    def _forget(self, backend: str, target: str) -> None:
        self.attachments = [
            a for a in self.attachments if (a.backend, a.target) != (backend, target)
        ]

    def ksym(self, addr: int) -> str:
        return str(self.bpf.ksym(addr).decode(errors="replace"))

    def close(self) -> None:
        """Detach everything and free the maps. Idempotent."""
        bpf, self._bpf = self._bpf, None
        _LIVE.discard(self)
        if bpf is not None:
            bpf.cleanup()

    def __enter__(self) -> Probe:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __hash__(self) -> int:
        return id(self)


class _LiveProbes:
    """Probes not yet closed; closed at interpreter exit as the last line of defence."""

    def __init__(self) -> None:
        self._probes: dict[int, Probe] = {}
        self._lock = threading.Lock()

    def add(self, p: Probe) -> None:
        with self._lock:
            self._probes[id(p)] = p

    def discard(self, p: Probe) -> None:
        with self._lock:
            self._probes.pop(id(p), None)

    def close_all(self) -> None:
        with self._lock:
            probes = list(self._probes.values())
        for p in probes:
            try:
                p.close()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


_LIVE = _LiveProbes()
atexit.register(_LIVE.close_all)


_LAST_SIGNAL = [int(signal.SIGINT)]


def interrupting_signal() -> int:
    """The signal that ended the last interrupted capture (SIGINT unless SIGTERM/SIGHUP)."""
    return _LAST_SIGNAL[0]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    _LAST_SIGNAL[0] = signum
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def interruptible() -> Iterator[None]:
    """Make SIGINT, SIGTERM and SIGHUP end the capture as Ctrl-C does, inside the block.

    Captures catch :class:`KeyboardInterrupt` once, stop waiting, read their maps and write
    what they have; probes are detached by their ``with`` blocks on the way out. SIGINT gets
    a handler too: Python installs its own only when SIGINT was not ignored at start, and a
    shell script's background job (``allocscope who-calls ... &``, then ``kill -INT``) starts
    with it ignored; the capture then ran its whole window and reported no interrupt.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _LAST_SIGNAL[0] = int(signal.SIGINT)
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for s in old:
        signal.signal(s, _raise_interrupt)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def sleep_until_interrupted(seconds: float | None) -> bool:
    """Sleep ``seconds`` (None = until Ctrl-C). Returns True if interrupted."""
    try:
        if seconds is None:
            while True:
                time.sleep(3600)
        else:
            time.sleep(seconds)
    except KeyboardInterrupt:
        return True
    return False
