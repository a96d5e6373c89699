"""Energy meters behind one interface, and a monitor that meters a block of code.

Meters (see docs/REFERENCE.md, "Energy meters"):

- ``Ina3221Meter``: INA3221 sysfs on Jetson TX2 (L4T R32), board total = the ``VDD_IN`` rail (mW).
- ``TegrastatsMeter``: ``tegrastats`` output on Jetson, board total = ``VDD_IN`` (mW).
- ``RaplMeter``: Intel RAPL package counters (µJ) on x86; the counter wraps at ``max_energy_range_uj``.
- ``NvmlMeter``: NVML total energy (mJ since driver load) on discrete NVIDIA GPUs (Volta+).
- ``EstimateMeter``: no meter; CPU seconds × configured watts, always labeled an estimate.

A meter either gives instantaneous power (``power_w``, watts; sampled and integrated by
``EnergyMonitor``) or a cumulative counter (``energy_j``, joules; differenced, wrap handled by the
meter). ``detect()`` returns the first meter that works here and keeps each probe's failure reason.

Python 3.6 compatible (Jetson TX2 stack); stdlib only; no I/O at import time.
"""

import glob
import os
import re
import shutil
import subprocess
import threading
import time
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "parse_tegrastats_line", "board_total_mw", "Meter", "Ina3221Meter", "TegrastatsMeter", "RaplMeter",
    "NvmlMeter", "EstimateMeter", "detect", "detect_report", "EnergyMonitor", "cpu_seconds",
]

# Rails that are the whole-board input on Jetson modules, in order of preference. Every other rail is a
# sub-rail of it (or of nothing we can total without double counting), so the total is never a sum.
BOARD_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")

# `NAME cur/avg` (JetPack 4 / L4T 28, mW implied) or `NAME curmW/avgmW` (JetPack 5+). The lookahead keeps
# `RAM 2344/7852MB` and `SWAP 0/3926MB` out: a rail value ends at whitespace or the end of the line.
_RAIL_RE = re.compile(r"(?:(?<=\s)|^)([A-Z][A-Z0-9_]*) (\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?(?=\s|$)")
# Fields any tegrastats line carries; a line with none of them and no rail is not tegrastats output.
_KNOWN_RE = re.compile(
    r"(?:^|\s)(?:RAM \d+/\d+MB|SWAP \d+/\d+MB|IRAM \d+/\d+kB|CPU \[|EMC_FREQ \d+%|GR3D_FREQ \d+%|"
    r"APE \d+|[A-Za-z]+@-?\d+(?:\.\d+)?C)")


def parse_tegrastats_line(line: str) -> Dict[str, Tuple[float, float]]:
    """Parse one ``tegrastats`` line into ``{rail: (current_mW, average_mW)}``.

    Accepts JetPack 4 / L4T 28 lines (``VDD_IN 3056/3056``) and JetPack 5+ lines (a leading
    ``MM-DD-YYYY HH:MM:SS`` timestamp, ``VDD_IN 3056mW/3056mW``). A valid line without power rails
    gives ``{}``. Anything that is not tegrastats output (or a rail we cannot read) raises ``ValueError``
    naming the line. Rails are returned as printed; use ``board_total_mw`` for the board total.
    """
    text = line.strip()
    rails: Dict[str, Tuple[float, float]] = OrderedDict()
    for m in _RAIL_RE.finditer(text):
        rails[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    for name in BOARD_TOTAL_RAILS:
        if name not in rails and re.search(r"(?:^|\s)%s(?:\s|$)" % name, text):
            raise ValueError("tegrastats line has %s but no readable cur/avg value: %r" % (name, line))
    if not rails and not _KNOWN_RE.search(text):
        raise ValueError("not a tegrastats line: %r" % (line,))
    return rails


def board_total_mw(rails: Dict[str, Tuple[float, float]], average: bool = False) -> Optional[float]:
    """Board input power in mW from parsed rails: ``VDD_IN`` (TX2, Orin NX/Nano) or ``POM_5V_IN`` (Nano).

    Never a sum of rails: the others are sub-rails of the input. ``None`` if no input rail is present.
    """
    for name in BOARD_TOTAL_RAILS:
        if name in rails:
            return rails[name][1 if average else 0]
    return None


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have been waited for."""
    t = os.times()  # children only here; process_time() resolves finer than os.times() clock ticks
    return time.process_time() + t.children_user + t.children_system


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _os_reason(path: str, err: OSError) -> str:
    if isinstance(err, PermissionError):
        return "cannot read %s: permission denied" % path
    if isinstance(err, FileNotFoundError):
        return "%s does not exist" % path
    return "cannot read %s: %s" % (path, err.strerror or err)


class Meter(object):
    """One interface for every meter.

    ``power_w()`` gives instantaneous power in watts (sampled meters) and ``energy_j()`` a cumulative
    energy in joules (counter meters); the one a meter does not have returns ``None``. ``probe()`` checks
    the meter works here and returns ``None`` or the reason it does not (kept in ``reason``).
    ``start()``/``close()`` manage anything the meter runs (a subprocess, a library handle).
    """

    name: str = "meter"
    source: str = "none"
    is_estimate: bool = False

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self._probed = False
        self.probes: Dict[str, Optional[str]] = OrderedDict()  # filled by detect()

    @property
    def available(self) -> bool:
        if not self._probed:
            self.probe()
        return self.reason is None

    def probe(self) -> Optional[str]:
        self._probed = True
        self.reason = self._probe()
        return self.reason

    def _probe(self) -> Optional[str]:
        return None

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_started(self) -> bool:
        """Whether ``start()`` has nothing (more) to do; meters that run nothing are always started."""
        return True

    def power_w(self) -> Optional[float]:
        return None

    def energy_j(self) -> Optional[float]:
        return None

    def __enter__(self) -> "Meter":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "%s(source=%r, reason=%r)" % (type(self).__name__, self.source, self.reason)


class Ina3221Meter(Meter):
    """Board input power from the INA3221 monitors in sysfs (Jetson TX2, L4T R32).

    Looks for ``<root>/*/iio:device*/rail_name_N`` whose content is ``rail`` (``VDD_IN`` by default, on
    chip 0x41 of the TX2) and reads ``in_power{N}_input`` (mW) beside it. The chip and device index are
    found, never assumed.
    """

    name = "ina3221"
    source = "ina3221"

    def __init__(self, root: str = "/sys/bus/i2c/drivers/ina3221x", rail: str = "VDD_IN") -> None:
        Meter.__init__(self)
        self.root = str(root)
        self.rail = rail
        self.power_path: Optional[str] = None
        self.rails: Dict[str, str] = {}  # rail name -> in_power file, for every rail found

    def _probe(self) -> Optional[str]:
        if not os.path.isdir(self.root):
            return "%s does not exist" % self.root
        names = sorted(glob.glob(os.path.join(glob.escape(self.root), "*", "iio:device*", "rail_name_*")))
        if not names:
            return "no */iio:device*/rail_name_* under %s" % self.root
        errors: List[str] = []
        self.rails = {}
        for path in names:
            index = path.rsplit("_", 1)[-1]
            try:
                rail = _read_text(path)
            except (OSError, UnicodeDecodeError) as e:
                errors.append(_os_reason(path, e) if isinstance(e, OSError) else "cannot decode %s" % path)
                continue
            self.rails[rail] = os.path.join(os.path.dirname(path), "in_power%s_input" % index)
        if self.rail not in self.rails:
            found = ", ".join(sorted(self.rails)) or "none"
            return "no %s rail under %s (rails found: %s)%s" % (
                self.rail, self.root, found, ("; " + "; ".join(errors)) if errors else "")
        path = self.rails[self.rail]
        try:
            float(_read_text(path))
        except OSError as e:
            return _os_reason(path, e)
        except ValueError:
            return "%s does not hold a number" % path
        self.power_path = path
        return None

    def power_w(self) -> Optional[float]:
        if not self.available or self.power_path is None:
            return None
        return float(_read_text(self.power_path)) / 1000.0


class TegrastatsMeter(Meter):
    """Board input power (``VDD_IN``) from ``tegrastats`` lines read in a background thread.

    ``cmd`` is run on ``start()``; ``--interval`` is in ms. ``from_lines`` feeds given lines instead (tests,
    saved logs). ``power_w()`` is the latest board total, ``None`` before the first line with one.
    """

    name = "tegrastats"
    source = "tegrastats"

    def __init__(self, cmd: Sequence[str] = ("tegrastats", "--interval", "100")) -> None:
        Meter.__init__(self)
        self.cmd = tuple(cmd)
        self._lines: Optional[Iterable[str]] = None
        self._proc: Optional[subprocess.Popen] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._latest_mw: Optional[float] = None
        self.lines_read = 0
        self.bad_lines: List[str] = []  # ValueError messages, at most 10 kept
        self.done = threading.Event()  # set when the line source ends

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> "TegrastatsMeter":
        meter = cls(cmd=())
        meter._lines = lines
        return meter

    def _probe(self) -> Optional[str]:
        if self._lines is not None:
            return None
        if not self.cmd:
            return "no tegrastats command given"
        if shutil.which(self.cmd[0]) is None:
            return "%s not found on PATH" % self.cmd[0]
        return None

    def start(self) -> None:
        if self._thread is not None:
            return
        if not self.available:
            raise RuntimeError("tegrastats meter unavailable: %s" % self.reason)
        self.done.clear()
        if self._lines is not None:
            source: Iterable[str] = self._lines
        else:
            self._proc = subprocess.Popen(list(self.cmd), stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, universal_newlines=True)
            assert self._proc.stdout is not None
            source = self._proc.stdout
        self._thread = threading.Thread(target=self._read, args=(source,), name="tegrastats-reader")
        self._thread.daemon = True
        self._thread.start()

    def _read(self, source: Iterable[str]) -> None:
        try:
            for line in source:
                if not line.strip():
                    continue
                try:
                    total = board_total_mw(parse_tegrastats_line(line))
                except ValueError as e:
                    if len(self.bad_lines) < 10:
                        self.bad_lines.append(str(e))
                    continue
                with self._lock:
                    self.lines_read += 1
                    if total is not None:
                        self._latest_mw = total
        finally:
            self.done.set()

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None

    def is_started(self) -> bool:
        return self._thread is not None

    def power_w(self) -> Optional[float]:
        with self._lock:
            return None if self._latest_mw is None else self._latest_mw / 1000.0


class RaplMeter(Meter):
    """Intel RAPL package energy (powercap sysfs, µJ counters) summed over CPU packages.

    Zones are the top-level ``intel-rapl:N`` whose ``name`` is ``package-*`` (a ``psys`` zone already
    contains the packages, so it is never added), or ``zones`` if given. Each counter wraps at its
    ``max_energy_range_uj``: a reading lower than the previous one adds the range back. Reads must come
    at least once per wrap period (minutes); ``EnergyMonitor`` samples every ``interval_s``.
    Since 2020 (CVE-2020-8694) ``energy_uj`` is root-only; that makes the meter unavailable with a reason.
    """

    name = "rapl"
    source = "rapl"

    def __init__(self, root: str = "/sys/class/powercap", zones: Optional[Sequence[str]] = None) -> None:
        Meter.__init__(self)
        self.root = str(root)
        self.zones: Optional[List[str]] = list(zones) if zones is not None else None
        self._max_uj: Dict[str, int] = {}
        self._last_uj: Dict[str, int] = {}
        self._total_uj = 0
        self._lock = threading.Lock()
        self.wraps = 0

    def _zone_dirs(self) -> List[str]:
        if self.zones is not None:
            return [os.path.join(self.root, z) for z in self.zones]
        tops = sorted(p for p in glob.glob(os.path.join(glob.escape(self.root), "intel-rapl:*"))
                      if re.search(r"intel-rapl:\d+$", p))
        packages = []
        for d in tops:
            try:
                if _read_text(os.path.join(d, "name")).startswith("package"):
                    packages.append(d)
            except OSError:
                pass
        if packages:
            return packages
        return [os.path.join(self.root, "intel-rapl:0")]

    def _probe(self) -> Optional[str]:
        if not os.path.isdir(self.root):
            return "%s does not exist (no RAPL)" % self.root
        self._max_uj, self._last_uj, self._total_uj, self.wraps = {}, {}, 0, 0
        for d in self._zone_dirs():
            for fname in ("max_energy_range_uj", "energy_uj"):
                path = os.path.join(d, fname)
                try:
                    value = int(_read_text(path))
                except PermissionError:
                    return ("cannot read %s: permission denied (RAPL energy is root-only since Linux "
                            "5.10 / CVE-2020-8694; run as root or make it readable)" % path)
                except OSError as e:
                    return _os_reason(path, e)
                except ValueError:
                    return "%s does not hold an integer" % path
                if fname == "max_energy_range_uj":
                    self._max_uj[d] = value
                else:
                    self._last_uj[d] = value
        return None

    def energy_j(self) -> Optional[float]:
        """Joules since the probe, wraps added back."""
        if not self.available:
            return None
        with self._lock:
            for d, last in list(self._last_uj.items()):
                now = int(_read_text(os.path.join(d, "energy_uj")))
                delta = now - last
                if delta < 0:
                    delta += self._max_uj[d]
                    self.wraps += 1
                self._total_uj += delta
                self._last_uj[d] = now
            return self._total_uj / 1e6


class NvmlMeter(Meter):
    """NVIDIA GPU energy from NVML (``nvmlDeviceGetTotalEnergyConsumption``, mJ; Volta+), via ``pynvml``.

    ``indices=None`` sums every GPU. Not on Jetson (no NVML there).
    """

    name = "nvml"
    source = "nvml"

    def __init__(self, indices: Optional[Sequence[int]] = None) -> None:
        Meter.__init__(self)
        self.indices = list(indices) if indices is not None else None
        self._nvml: Optional[object] = None
        self._handles: List[object] = []

    def _probe(self) -> Optional[str]:
        try:
            import pynvml  # type: ignore
        except ImportError:
            return "pynvml is not installed"
        try:
            pynvml.nvmlInit()
        except Exception as e:  # pynvml raises its own NVMLError types
            return "nvmlInit failed: %s" % e
        try:
            count = pynvml.nvmlDeviceGetCount()
            indices = self.indices if self.indices is not None else list(range(count))
            if not indices:
                raise RuntimeError("no NVIDIA GPU")
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
            for h in handles:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
        except Exception as e:
            pynvml.nvmlShutdown()
            return "NVML total energy not available: %s" % e
        self._nvml, self._handles = pynvml, handles
        return None

    def energy_j(self) -> Optional[float]:
        if not self.available or self._nvml is None:
            return None
        nvml = self._nvml
        return sum(nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1000.0  # type: ignore

    def close(self) -> None:
        pass  # the handle is kept for later monitors; NVML is shut down with the process


class EstimateMeter(Meter):
    """No meter: energy = CPU seconds (this process + waited-for children) × ``watts``. An estimate."""

    name = "estimate"
    source = "estimate"
    is_estimate = True

    def __init__(self, watts: float = 5.0, cpu_time: Callable[[], float] = cpu_seconds) -> None:
        Meter.__init__(self)
        if not watts > 0:
            raise ValueError("EstimateMeter watts must be > 0, got %r" % (watts,))
        self.watts = float(watts)
        self._cpu_time = cpu_time

    def energy_j(self) -> Optional[float]:
        return self._cpu_time() * self.watts


_LAST_REPORT: Dict[str, Optional[str]] = OrderedDict()


def detect(prefer: Optional[str] = None, watts: float = 5.0,
           candidates: Optional[Sequence[Meter]] = None) -> Meter:
    """The first available meter: INA3221, tegrastats, RAPL, NVML, else ``EstimateMeter(watts)``.

    ``prefer`` (a meter name: "ina3221", "tegrastats", "rapl", "nvml", "estimate") is tried first.
    ``candidates`` replaces the default meters (tests). The returned meter's ``probes`` maps each tried
    name to ``None`` (chosen) or the reason it failed; ``detect_report()`` returns the last such map.
    """
    meters: List[Meter] = list(candidates) if candidates is not None else [
        Ina3221Meter(), TegrastatsMeter(), RaplMeter(), NvmlMeter()]
    if prefer is not None:
        names = [m.name for m in meters] + ["estimate"]
        if prefer not in names:
            raise ValueError("unknown meter %r; choose from %s" % (prefer, ", ".join(names)))
        meters.sort(key=lambda m: m.name != prefer)
    report: Dict[str, Optional[str]] = OrderedDict()
    chosen: Optional[Meter] = None
    if prefer == "estimate":
        chosen = EstimateMeter(watts)
    else:
        for meter in meters:
            try:
                reason = meter.probe()
            except Exception as e:  # a probe must never stop the run; keep why it failed
                reason = "probe failed: %s: %s" % (type(e).__name__, e)
                meter.reason = reason
            report[meter.name] = reason
            if reason is None:
                chosen = meter
                break
    if chosen is None:
        chosen = EstimateMeter(watts)
    report.setdefault(chosen.name, None)
    chosen.probes = report
    _LAST_REPORT.clear()
    _LAST_REPORT.update(report)
    return chosen


def detect_report() -> Dict[str, Optional[str]]:
    """``{meter name: None if chosen else reason}`` from the last ``detect()`` call."""
    return OrderedDict(_LAST_REPORT)


class EnergyMonitor(object):
    """Meter a block of code: wall and CPU seconds, energy (J) and mean power (W).

    Power meters are sampled every ``interval_s`` in a background thread and integrated with the
    trapezoid rule; the first and last readings are held to the window's edges. Counter meters are
    differenced (also read every ``interval_s`` so wraps are seen). ``measure_idle(seconds)``, called
    outside the block, measures the idle baseline; ``result()`` then also gives ``energy_above_idle_j``.

    >>> with EnergyMonitor(detect()) as mon:   # doctest: +SKIP
    ...     work()
    >>> mon.result()["energy_j"]               # doctest: +SKIP
    """

    def __init__(self, meter: Meter, interval_s: float = 0.1) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0, got %r" % (interval_s,))
        self.meter = meter
        self.interval_s = float(interval_s)
        self.idle_w: Optional[float] = None
        self.idle_s: Optional[float] = None
        self._samples: List[Tuple[float, float]] = []
        self._counter = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started_meter = False
        self._running = False
        self._t0 = self._t1 = 0.0
        self._cpu0 = self._cpu1 = 0.0
        self.errors: List[str] = []

    def _read(self) -> None:
        try:
            value = self.meter.energy_j() if self._counter else self.meter.power_w()
        except Exception as e:  # a failed read loses one sample, not the run
            if len(self.errors) < 10:
                self.errors.append("%s: %s" % (type(e).__name__, e))
            return
        if value is not None:
            self._samples.append((time.perf_counter(), float(value)))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._read()

    def __enter__(self) -> "EnergyMonitor":
        if self._running:
            raise RuntimeError("EnergyMonitor is already running")
        if not self.meter.available:
            raise RuntimeError("meter %s unavailable: %s" % (self.meter.name, self.meter.reason))
        if not self.meter.is_started():
            self.meter.start()
            self._started_meter = True
        self._samples, self.errors = [], []
        try:
            self._counter = self.meter.energy_j() is not None
        except Exception:
            if self._started_meter:
                self.meter.close()
                self._started_meter = False
            raise
        self._stop.clear()
        self._running = True
        self._cpu0 = cpu_seconds()
        self._t0 = time.perf_counter()
        self._read()
        self._thread = threading.Thread(target=self._loop, name="energy-monitor")
        self._thread.daemon = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._read()
        self._t1 = time.perf_counter()
        self._cpu1 = cpu_seconds()
        self._running = False
        if self._started_meter:
            self.meter.close()
            self._started_meter = False

    def _energy(self) -> Optional[float]:
        s = self._samples
        if not s:
            return None
        if self._counter:
            return s[-1][1] - s[0][1] if len(s) > 1 else 0.0
        energy = s[0][1] * max(0.0, s[0][0] - self._t0) + s[-1][1] * max(0.0, self._t1 - s[-1][0])
        for (ta, pa), (tb, pb) in zip(s[:-1], s[1:]):
            energy += 0.5 * (pa + pb) * (tb - ta)
        return energy

    def measure_idle(self, seconds: float) -> float:
        """Measure mean power (W) over ``seconds`` of sleep; kept as the idle baseline and returned."""
        if self._running:
            raise RuntimeError("measure_idle must be called outside the measured block")
        idle = EnergyMonitor(self.meter, self.interval_s)
        with idle:
            time.sleep(seconds)
        power = idle.result()["mean_power_w"]
        if power is None:
            raise RuntimeError("meter %s gave no reading while idle" % self.meter.name)
        self.idle_w, self.idle_s = float(power), float(seconds)
        return self.idle_w

    def result(self) -> Dict[str, object]:
        """``wall_s``, ``cpu_s``, ``energy_j``, ``mean_power_w``, ``source``, ``is_estimate``, ``samples``,
        ``idle_w`` and ``energy_above_idle_j`` (``None`` without ``measure_idle``), ``meter_errors``."""
        if self._running:
            raise RuntimeError("result() is available after the block ends")
        wall = self._t1 - self._t0
        energy = self._energy()
        above = None
        if energy is not None and self.idle_w is not None:
            above = energy - self.idle_w * wall
        return {
            "wall_s": wall,
            "cpu_s": self._cpu1 - self._cpu0,
            "energy_j": energy,
            "mean_power_w": (energy / wall) if energy is not None and wall > 0 else None,
            "source": self.meter.source,
            "is_estimate": bool(self.meter.is_estimate),
            "samples": len(self._samples),
            "idle_w": self.idle_w,
            "energy_above_idle_j": above,
            "meter_errors": list(self.errors),
        }
