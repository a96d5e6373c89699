"""Energy meters: tegrastats parsing on real device lines, sysfs meters on trees written here, the monitor.

Runs on Python 3.6 as well (the Jetson TX2 stack), so no 3.7+ syntax here either.
"""

import os
import re
import sys
import time
import types
from pathlib import Path

import pytest

from shared import energy
from shared.energy import (EnergyMonitor, EstimateMeter, Ina3221Meter, Meter, NvmlMeter, RaplMeter,
                           TegrastatsMeter, board_total_mw, detect, detect_report, parse_tegrastats_line)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tegrastats"
FIXTURE_FILES = sorted(FIXTURES.glob("*.txt"))


def fixture_lines():
    out = []
    for path in FIXTURE_FILES:
        for line in path.read_text().splitlines():
            if line.strip():
                out.append((path.name, line))
    return out


def vdd_in_from_text(line):
    """VDD_IN cur/avg read with a plain token scan, independent of the parser's regex."""
    tokens = line.split()
    value = tokens[tokens.index("VDD_IN") + 1]
    cur, avg = value.replace("mW", "").split("/")
    return float(cur), float(avg)


# ---------------------------------------------------------------- tegrastats lines


def test_fixture_files_present():
    names = [p.name for p in FIXTURE_FILES]
    assert {"tx2_jp4_a.txt", "tx2_jp4_b.txt", "tx2_jp4_c.txt", "tx2_l4t28_legacy.txt"} <= set(names)
    assert len(fixture_lines()) >= 4


@pytest.mark.parametrize("name,line", fixture_lines())
def test_every_fixture_line_parses_with_vdd_in_as_board_total(name, line):
    rails = parse_tegrastats_line(line)
    cur, avg = vdd_in_from_text(line)
    assert rails["VDD_IN"] == (cur, avg), name
    assert board_total_mw(rails) == cur
    assert board_total_mw(rails, average=True) == avg
    # every `NAME a/b` rail token in the line is parsed, and none of RAM/SWAP (MB) is taken for a rail
    names = set(re.findall(r"\b(VDD_\w+) \d+(?:mW)?/\d+", line))
    assert set(rails) == names
    assert "RAM" not in rails and "SWAP" not in rails
    # sub-rails are not added into the total
    subs = sum(c for rail, (c, _) in rails.items() if rail != "VDD_IN")
    assert subs > 0
    assert board_total_mw(rails) != cur + subs


def test_known_fixture_values_read_from_the_files():
    a = (FIXTURES / "tx2_jp4_a.txt").read_text()
    assert "VDD_IN 3056/3056" in a  # the example docs/REFERENCE.md quotes
    assert board_total_mw(parse_tegrastats_line(a.splitlines()[0])) == 3056.0
    b = (FIXTURES / "tx2_jp4_b.txt").read_text().splitlines()[0]
    assert parse_tegrastats_line(b)["VDD_IN"] == vdd_in_from_text(b)
    assert parse_tegrastats_line(b)["VDD_IN"][0] != parse_tegrastats_line(b)["VDD_IN"][1]  # cur vs avg kept apart
    legacy = (FIXTURES / "tx2_l4t28_legacy.txt").read_text().splitlines()[0]
    rails = parse_tegrastats_line(legacy)
    assert rails["VDD_IN"] == vdd_in_from_text(legacy)
    assert {"VDD_CPU", "VDD_GPU", "VDD_SOC", "VDD_DDR"} <= set(rails)


def test_jetpack5_line_with_timestamp_and_units():
    line = ("11-23-2026 01:02:03 RAM 2344/7852MB (lfb 1154x4MB) CPU [1%@345,2%@345] EMC_FREQ 0% "
            "GR3D_FREQ 0% VDD_GPU_SOC 3188mW/3188mW VDD_CPU_CV 1195mW/1195mW VIN_SYS_5V0 3229mW/3229mW "
            "VDD_IN 5004mW/4870mW")
    rails = parse_tegrastats_line(line)
    assert rails["VDD_GPU_SOC"] == (3188.0, 3188.0)
    assert rails["VIN_SYS_5V0"] == (3229.0, 3229.0)
    assert rails["VDD_IN"] == (5004.0, 4870.0)
    assert board_total_mw(rails) == 5004.0
    # JetPack 5 lines without an input rail: no total, and never a sum of the others
    del rails["VDD_IN"]
    assert board_total_mw(rails) is None


def test_line_without_power_rail_gives_empty_dict():
    line = "RAM 2344/7852MB (lfb 1154x4MB) CPU [1%@345,off,off,1%@345] EMC_FREQ 4%@1600 GR3D_FREQ 0%@624"
    assert dict(parse_tegrastats_line(line)) == {}


@pytest.mark.parametrize("bad", ["hello world", "", "VDD_IN three/thousand CPU [1%@345]",
                                 "Traceback (most recent call last):"])
def test_garbage_raises_naming_the_line(bad):
    with pytest.raises(ValueError) as info:
        parse_tegrastats_line(bad)
    assert repr(bad) in str(info.value)


# ---------------------------------------------------------------- INA3221 sysfs


def write_chip(root, chip, device, rails, powers):
    d = root / chip / device
    d.mkdir(parents=True)
    for n, (rail, mw) in enumerate(zip(rails, powers)):
        (d / ("rail_name_%d" % n)).write_text(rail + "\n")
        (d / ("in_power%d_input" % n)).write_text("%d\n" % mw)
        (d / ("in_current%d_input" % n)).write_text("0\n")
        (d / ("in_voltage%d_input" % n)).write_text("19000\n")
    return d


def tx2_tree(root, device41="iio:device1", vdd_in_channel=0):
    write_chip(root, "0-0040", "iio:device0", ["VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI"], [152, 687, 0])
    rails = ["VDD_SYS_CPU", "VDD_SYS_DDR"]
    rails.insert(vdd_in_channel, "VDD_IN")
    powers = [152, 883]
    powers.insert(vdd_in_channel, 3056)
    return write_chip(root, "0-0041", device41, rails, powers)


def test_ina3221_picks_vdd_in_of_the_right_chip(tmp_path):
    d = tx2_tree(tmp_path)
    meter = Ina3221Meter(root=str(tmp_path))
    assert meter.probe() is None and meter.available
    assert meter.power_w() == pytest.approx(3.056)
    assert set(meter.rails) == {"VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI", "VDD_IN", "VDD_SYS_CPU",
                                "VDD_SYS_DDR"}
    (d / "in_power0_input").write_text("4100\n")
    assert meter.power_w() == pytest.approx(4.1)
    assert meter.source == "ina3221" and not meter.is_estimate and meter.energy_j() is None


def test_ina3221_finds_rail_by_name_not_index(tmp_path):
    tx2_tree(tmp_path, device41="iio:device7", vdd_in_channel=2)
    meter = Ina3221Meter(root=str(tmp_path))
    assert meter.available
    assert meter.power_path.endswith(os.path.join("iio:device7", "in_power2_input"))
    assert meter.power_w() == pytest.approx(3.056)


def test_ina3221_missing_tree_or_rail(tmp_path):
    meter = Ina3221Meter(root=str(tmp_path / "nope"))
    assert not meter.available and "nope" in meter.reason
    write_chip(tmp_path, "0-0040", "iio:device0", ["VDD_SYS_GPU"], [152])
    meter = Ina3221Meter(root=str(tmp_path))
    assert not meter.available
    assert "no VDD_IN rail" in meter.reason and "VDD_SYS_GPU" in meter.reason
    assert meter.power_w() is None


def test_ina3221_unreadable_power_file_names_it(tmp_path):
    d = tx2_tree(tmp_path)
    power = d / "in_power0_input"
    power.unlink()
    power.mkdir()  # reading a directory is an OSError for root too
    meter = Ina3221Meter(root=str(tmp_path))
    assert not meter.available
    assert str(power) in meter.reason


def test_ina3221_broken_symlink_rail_name_names_it(tmp_path):
    d = tx2_tree(tmp_path)
    name = d / "rail_name_0"
    name.unlink()
    name.symlink_to(tmp_path / "missing-target")
    meter = Ina3221Meter(root=str(tmp_path))
    assert not meter.available
    assert "no VDD_IN rail" in meter.reason and str(name) in meter.reason


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="chmod does not stop root")
def test_ina3221_permission_denied(tmp_path):
    d = tx2_tree(tmp_path)
    power = d / "in_power0_input"
    power.chmod(0)
    try:
        meter = Ina3221Meter(root=str(tmp_path))
        assert not meter.available
        assert "permission denied" in meter.reason and str(power) in meter.reason
    finally:
        power.chmod(0o644)


# ---------------------------------------------------------------- RAPL


def rapl_zone(root, zone, name, energy_uj, max_uj):
    d = root / zone
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text("%d\n" % energy_uj)
    (d / "max_energy_range_uj").write_text("%d\n" % max_uj)
    return d


def test_rapl_counter_wrap(tmp_path):
    d = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 900000, 1000000)
    meter = RaplMeter(root=str(tmp_path))
    assert meter.available and meter.power_w() is None
    assert meter.energy_j() == 0.0
    (d / "energy_uj").write_text("950000\n")
    assert meter.energy_j() == pytest.approx(0.05)
    (d / "energy_uj").write_text("100000\n")  # went down: wrapped at 1 J
    assert meter.energy_j() == pytest.approx(0.05 + 0.15)
    assert meter.wraps == 1
    (d / "energy_uj").write_text("400000\n")
    assert meter.energy_j() == pytest.approx(0.5)


def test_rapl_sums_packages_only(tmp_path):
    a = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 0, 10 ** 9)
    b = rapl_zone(tmp_path, "intel-rapl:1", "package-1", 0, 10 ** 9)
    psys = rapl_zone(tmp_path, "intel-rapl:2", "psys", 0, 10 ** 9)
    core = rapl_zone(tmp_path, "intel-rapl:0:0", "core", 0, 10 ** 9)
    meter = RaplMeter(root=str(tmp_path))
    assert meter.available
    for d, uj in ((a, 1000000), (b, 2000000), (psys, 9000000), (core, 500000)):
        (d / "energy_uj").write_text("%d\n" % uj)
    assert meter.energy_j() == pytest.approx(3.0)


def test_rapl_permission_error_is_unavailable_with_reason(tmp_path, monkeypatch):
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 5, 1000)
    real_open = open

    def guarded_open(path, *args, **kwargs):
        if str(path).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(energy, "open", guarded_open, raising=False)
    meter = RaplMeter(root=str(tmp_path))
    assert not meter.available
    assert "permission denied" in meter.reason and "root" in meter.reason
    assert os.path.join("intel-rapl:0", "energy_uj") in meter.reason
    assert meter.energy_j() is None


def test_rapl_unreadable_counter_or_no_powercap(tmp_path):
    d = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 5, 1000)
    (d / "energy_uj").unlink()
    (d / "energy_uj").mkdir()
    meter = RaplMeter(root=str(tmp_path))
    assert not meter.available and str(d / "energy_uj") in meter.reason
    assert not RaplMeter(root=str(tmp_path / "none")).available


# ---------------------------------------------------------------- tegrastats meter


def test_tegrastats_from_lines_keeps_latest_vdd_in():
    lines = [line for _, line in fixture_lines()] + ["garbage output", ""]
    meter = TegrastatsMeter.from_lines(lines)
    assert meter.available and meter.power_w() is None
    meter.start()
    assert meter.done.wait(5.0)
    last = [line for _, line in fixture_lines()][-1]
    assert meter.power_w() == pytest.approx(vdd_in_from_text(last)[0] / 1000.0)
    assert meter.lines_read == len(fixture_lines())
    assert len(meter.bad_lines) == 1 and "garbage output" in meter.bad_lines[0]
    meter.close()


def test_tegrastats_subprocess_and_monitor():
    line = (FIXTURES / "tx2_jp4_a.txt").read_text().splitlines()[0]
    script = "import sys, time\nfor _ in range(200):\n    print(%r)\n    sys.stdout.flush()\n    time.sleep(0.01)\n"
    meter = TegrastatsMeter(cmd=(sys.executable, "-c", script % line))
    assert meter.available
    with EnergyMonitor(meter, interval_s=0.02) as mon:
        deadline = time.monotonic() + 10.0  # the child's first line may be slow on a loaded runner
        while meter.power_w() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
    res = mon.result()
    assert not meter.is_started()  # the monitor started it, so it stopped it
    assert res["source"] == "tegrastats" and res["is_estimate"] is False
    assert res["mean_power_w"] == pytest.approx(3.056, rel=1e-6)
    assert res["energy_j"] == pytest.approx(3.056 * res["wall_s"], rel=1e-6)


def test_tegrastats_missing_command():
    meter = TegrastatsMeter(cmd=("no-such-tegrastats-binary",))
    assert not meter.available and "not found on PATH" in meter.reason
    with pytest.raises(RuntimeError):
        meter.start()


# ---------------------------------------------------------------- NVML


def test_nvml_without_pynvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    meter = NvmlMeter()
    assert not meter.available and "pynvml" in meter.reason


def test_nvml_with_a_fake_pynvml(monkeypatch):
    state = {"mj": [1000, 5000]}
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda h: state["mj"][h]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    meter = NvmlMeter()
    assert meter.available
    assert meter.energy_j() == pytest.approx(6.0)
    state["mj"] = [1500, 5000]
    assert meter.energy_j() == pytest.approx(6.5)


# ---------------------------------------------------------------- monitor and estimate


class FakePower(Meter):
    name = "fake"
    source = "fake"

    def __init__(self, watts):
        Meter.__init__(self)
        self.watts = watts

    def power_w(self):
        return self.watts


class FakeCounter(Meter):
    name = "counter"
    source = "counter"

    def __init__(self, watts):
        Meter.__init__(self)
        self.watts = watts
        self.t0 = time.perf_counter()

    def energy_j(self):
        return 100.0 + self.watts * (time.perf_counter() - self.t0)


def test_monitor_integrates_constant_power():
    with EnergyMonitor(FakePower(2.0), interval_s=0.02) as mon:
        time.sleep(0.3)
    res = mon.result()
    assert res["wall_s"] >= 0.3
    assert 0.6 <= res["energy_j"] < 0.6 + 2.0 * 1.0  # ~0.6 J; a loaded runner may oversleep
    assert res["energy_j"] == pytest.approx(2.0 * res["wall_s"], rel=1e-9)
    assert res["mean_power_w"] == pytest.approx(2.0)
    assert res["samples"] >= 3
    assert res["source"] == "fake" and res["is_estimate"] is False
    assert res["idle_w"] is None and res["energy_above_idle_j"] is None
    assert set(res) >= {"wall_s", "cpu_s", "energy_j", "mean_power_w", "source", "is_estimate", "samples"}


def test_monitor_differences_counters():
    with EnergyMonitor(FakeCounter(4.0), interval_s=0.02) as mon:
        time.sleep(0.1)
    res = mon.result()
    # the first and last counter reads lie inside the window and around the 0.1 s sleep
    assert 4.0 * 0.1 <= res["energy_j"] <= 4.0 * res["wall_s"]
    assert res["samples"] >= 2


def test_monitor_through_rapl_wrap(tmp_path):
    d = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 990000, 1000000)
    meter = RaplMeter(root=str(tmp_path))
    with EnergyMonitor(meter, interval_s=0.01) as mon:
        (d / "energy_uj").write_text("10000\n")  # +0.02 J across the wrap
    assert mon.result()["energy_j"] == pytest.approx(0.02)
    assert mon.result()["source"] == "rapl"


def test_idle_baseline_reported_separately():
    meter = FakePower(1.0)
    mon = EnergyMonitor(meter, interval_s=0.02)
    assert mon.measure_idle(0.1) == pytest.approx(1.0)
    meter.watts = 3.0
    with mon:
        time.sleep(0.1)
        with pytest.raises(RuntimeError):
            mon.measure_idle(0.01)
    res = mon.result()
    assert res["idle_w"] == pytest.approx(1.0)
    assert res["energy_j"] == pytest.approx(3.0 * res["wall_s"])
    assert res["energy_above_idle_j"] == pytest.approx(2.0 * res["wall_s"])


def test_sampling_errors_are_counted_not_fatal():
    class Flaky(FakePower):
        calls = 0

        def power_w(self):
            Flaky.calls += 1
            if Flaky.calls % 2 == 0:
                raise OSError("i2c read failed")
            return 2.0

    with EnergyMonitor(Flaky(2.0), interval_s=0.01) as mon:
        time.sleep(0.1)
    res = mon.result()
    assert res["meter_errors"] and "i2c read failed" in res["meter_errors"][0]
    assert res["mean_power_w"] == pytest.approx(2.0)


def test_estimate_meter_is_labeled_and_uses_cpu_time():
    cpu = {"s": 10.0}
    meter = EstimateMeter(watts=7.5, cpu_time=lambda: cpu["s"])
    assert meter.is_estimate and meter.source == "estimate" and meter.available
    with EnergyMonitor(meter) as mon:
        cpu["s"] = 12.0
    res = mon.result()
    assert res["is_estimate"] is True and res["source"] == "estimate"
    assert res["energy_j"] == pytest.approx(2.0 * 7.5)
    with pytest.raises(ValueError):
        EstimateMeter(watts=0)


def test_estimate_on_real_cpu_time():
    with EnergyMonitor(EstimateMeter(watts=5.0)) as mon:
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
    res = mon.result()
    assert res["cpu_s"] >= 0.04
    assert res["energy_j"] == pytest.approx(5.0 * res["cpu_s"], abs=0.05)


# ---------------------------------------------------------------- detect


def test_detect_here_gives_estimate_or_rapl_with_reasons():
    meter = detect(watts=6.0)
    assert meter.name in ("estimate", "rapl", "nvml", "ina3221", "tegrastats")
    report = detect_report()
    assert report == meter.probes
    assert report[meter.name] is None
    if meter.name in ("estimate", "rapl"):  # a development machine or CI runner
        for name in ("ina3221", "tegrastats"):
            assert report[name], name
    if meter.name == "estimate":
        assert meter.is_estimate and meter.watts == 6.0
        assert report["rapl"] and report["nvml"]


def test_detect_order_prefer_and_probe_errors(tmp_path):
    class Broken(Meter):
        name = "broken"

        def _probe(self):
            raise RuntimeError("boom")

    tx2_tree(tmp_path / "ina")
    rapl_zone(tmp_path / "pc", "intel-rapl:0", "package-0", 0, 1000)
    cands = [Broken(), Ina3221Meter(root=str(tmp_path / "ina")), RaplMeter(root=str(tmp_path / "pc"))]
    meter = detect(candidates=cands)
    assert meter.name == "ina3221"
    assert "boom" in meter.probes["broken"]
    meter = detect(prefer="rapl", candidates=cands)
    assert meter.name == "rapl" and list(meter.probes) == ["rapl"]
    meter = detect(prefer="estimate", watts=3.0, candidates=cands)
    assert meter.is_estimate and meter.watts == 3.0
    with pytest.raises(ValueError):
        detect(prefer="nonsense", candidates=cands)
    meter = detect(candidates=[Broken()], watts=2.0)
    assert meter.name == "estimate" and "boom" in meter.probes["broken"]
