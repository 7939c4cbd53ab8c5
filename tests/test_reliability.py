"""Reliability at the CLI boundary: faults become one line and exit 2, signals end a command
cleanly (130 / 143) without leaving temporary files, files get the umask's mode, output
paths are checked, corrupt ceiling caches are never used, calibrations take turns."""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from flopscale.profiler import cli, devices
from flopscale.profiler._io import atomic_path, default_file_mode, write_text_atomic
from flopscale.profiler.commands import _common, env
from flopscale.profiler.commands._common import UserError, check_output_path
from flopscale.profiler.devices import CacheWarning, Ceilings, calibrate

ROOT = os.geteuid() == 0


def run_with(monkeypatch, capsys, fn, argv=("env",)):
    """Run ``flopscale env`` in-process with its ``run`` replaced by ``fn``."""
    monkeypatch.setattr(env, "run", fn)
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def raiser(exc):
    def run(args):  # noqa: ARG001
        raise exc
    return run


# ------------------------------------------------------------------ the CLI boundary

FAULTS = [
    (PermissionError(errno.EACCES, "Permission denied", "/ro/out.json"), "Permission denied: /ro/out.json"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp"), "Is a directory: /tmp"),
    (OSError(errno.ENOSPC, "No space left on device", "/full/x.csv"), "no space left on device: /full/x.csv"),
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "a.csv"), "No such file or directory: a.csv"),
    (MemoryError(), "out of memory"),
    (MemoryError("Unable to allocate 2.1 TiB for an array\nwith shape (4500, 60001)"), "Unable to allocate"),
    (UnicodeDecodeError("utf-8", b"\xff\xfe", 0, 1, "invalid start byte"), "cannot decode"),
    (UnicodeEncodeError("ascii", "\u03b1 = 0.34", 0, 1, "ordinal not in range(128)"), "PYTHONIOENCODING=utf-8"),
    (OSError(errno.EBADF, "Bad file descriptor", 3), "Bad file descriptor: 3"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried "
                  "to allocate 400000000000000 bytes. Error code 12 (Cannot allocate memory)"), "out of memory"),
]


@pytest.mark.parametrize("exc,expected", FAULTS, ids=[type(e).__name__ + str(i) for i, (e, _) in enumerate(FAULTS)])
def test_environment_faults_are_one_line_and_exit_2(monkeypatch, capsys, exc, expected):
    rc, out, err = run_with(monkeypatch, capsys, raiser(exc))
    assert rc == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("flopscale env: error: ")
    assert expected in lines[0]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_to_a_full_device_is_one_line_and_exit_2():
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "flopscale", "allocate", "--compute", "1e22", "--json"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "flopscale allocate: error: no space left on device\n"


def test_user_error_spanning_lines_prints_one_line(monkeypatch, capsys):
    rc, _, err = run_with(monkeypatch, capsys, raiser(UserError("first\nsecond")))
    assert rc == 2 and err == "flopscale env: error: first; second\n"


def test_torch_out_of_memory_is_an_environment_fault(monkeypatch, capsys):
    import torch

    rc, _, err = run_with(monkeypatch, capsys, raiser(torch.OutOfMemoryError("CUDA out of memory. Tried to "
                                                                            "allocate 2.00 GiB")))
    assert rc == 2 and len(err.splitlines()) == 1 and "out of memory" in err and "2.00 GiB" in err


def test_keyboard_interrupt_is_130(monkeypatch, capsys):
    rc, _, err = run_with(monkeypatch, capsys, raiser(KeyboardInterrupt()))
    assert rc == 130 and err.strip() == "flopscale env: interrupted"


def test_a_bug_is_one_line_naming_it_exit_1_and_the_traceback_on_request(monkeypatch, capsys):
    monkeypatch.delenv("FLOPSCALE_DEBUG", raising=False)
    rc, _, err = run_with(monkeypatch, capsys, raiser(TypeError("unhashable type: 'list'")))
    assert rc == 1
    assert len(err.splitlines()) == 1
    assert "internal error: TypeError: unhashable type: 'list'" in err and "FLOPSCALE_DEBUG=1" in err
    monkeypatch.setenv("FLOPSCALE_DEBUG", "1")
    with pytest.raises(TypeError):
        run_with(monkeypatch, capsys, raiser(TypeError("x")))


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["plan", "--gpus", "abc"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("flopscale plan: error: argument --gpus") and "--help" in err


def test_warnings_from_domain_code_print_as_one_line(monkeypatch, capsys):
    import warnings

    def run(args):  # noqa: ARG001
        warnings.warn("ignoring the ceilings cache x: flops['fp32'] = -5\nmeasuring again", CacheWarning)
        return 0

    rc, _, err = run_with(monkeypatch, capsys, run)
    assert rc == 0
    assert err == "flopscale env: warning: ignoring the ceilings cache x: flops['fp32'] = -5; measuring again\n"


# ------------------------------------------------------------------ signals

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from flopscale.profiler import cli
    from flopscale.profiler.commands import env
    from flopscale.profiler.commands._common import atomic_path
    target = Path(sys.argv[1])
    mode = sys.argv[2]

    def run(args):
        if mode == "workers":  # lawfit's forked workers, as 'fit --workers 2' uses them
            from flopscale.lawfit._parallel import run_blocks

            def block(i):
                if i == 1:
                    (target.parent / "child.pid").write_text(str(os.getpid()))
                else:
                    print("ready", flush=True)
                time.sleep(60)
            run_blocks(block, 2, 2)
            return 0
        if mode == "fork":
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            print(pid, flush=True)
            _, status = os.waitpid(pid, 0)
            print("child", os.WIFSIGNALED(status) and os.WTERMSIG(status), flush=True)
            return 0
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"")          # a 0-byte file, as savefig leaves at first
            if mode == "swallow":
                try:
                    print("ready", flush=True)
                    time.sleep(60)
                except KeyboardInterrupt:
                    return 0
            print("ready", flush=True)
            time.sleep(60)
        return 0

    env.run = run
    sys.exit(cli.main(["env"]))
""")


def start(tmp_path, mode):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, str(script), str(out / "figure.png"), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    assert first, proc.stderr.read()
    return proc, out, first


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_ends_a_write_with_its_exit_code_and_no_temporary_file(tmp_path, sig, code, word):
    proc, out, first = start(tmp_path, "plain")
    assert first.strip() == "ready"
    assert len(list(out.iterdir())) == 1  # the hidden temporary file exists now
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.strip() == f"flopscale env: {word}" + (" (SIGTERM)" if code == 143 else "")
    assert list(out.iterdir()) == []  # neither the target nor the hidden temporary file


def test_a_command_that_swallows_sigterm_still_does_not_exit_0(tmp_path):
    proc, out, _ = start(tmp_path, "swallow")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    # the command chose to finish its file: complete, no hidden temporary file beside it
    assert [p.name for p in out.iterdir()] == ["figure.png"]


def test_a_forked_worker_dies_quietly_on_sigterm(tmp_path):
    proc, _, first = start(tmp_path, "fork")
    child = int(first)
    time.sleep(0.2)
    os.kill(child, signal.SIGTERM)
    rest, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert rest.strip() == f"child {int(signal.SIGTERM)}"  # killed by the signal, as by default
    assert proc.returncode == 0


def test_sigterm_to_a_command_with_forked_workers_leaves_no_worker_running(tmp_path):
    proc, out, first = start(tmp_path, "workers")
    assert first.strip() == "ready"
    pid_file = out / "child.pid"
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err, err
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):  # the worker is gone, not orphaned
        os.kill(child, 0)


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a handler for SIGTERM (Linux: SigCgt in /proc/PID/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    except OSError:
        pass
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_sigterm_to_a_real_profile_run_exits_143_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flopscale", "profile", "matmul", "--shape", "32x32x32", "--provider", "torch",
         "--time-budget", "60", "--csv", str(out / "rows.csv"), "--plot", str(out / "roofline.png")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "FLOPSCALE_CACHE_DIR": str(tmp_path / "cache")})
    deadline = time.monotonic() + 120
    while not catches_sigterm(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # into the work
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "flopscale profile: terminated (SIGTERM)"
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------ files

@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_mode_not_0600(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert default_file_mode() == 0o666 & ~mask
        write_text_atomic(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "b.png") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    for name in ("a.json", "b.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask, name


def test_replacing_a_file_keeps_its_mode(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    target.chmod(0o640)
    write_text_atomic(target, "new")
    assert target.read_text() == "new" and target.stat().st_mode & 0o777 == 0o640


def test_an_exception_inside_the_block_leaves_no_file(tmp_path):
    with pytest.raises(cli.Terminated):
        with atomic_path(tmp_path / "x.png") as tmp:
            tmp.write_bytes(b"partial")
            raise cli.Terminated()
    assert list(tmp_path.iterdir()) == []


def test_errors_of_an_atomic_write_name_the_target_not_the_temporary_file(tmp_path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(IsADirectoryError) as exc:
        write_text_atomic(tmp_path / "dir", "x")
    assert exc.value.filename == str(tmp_path / "dir")
    with pytest.raises(FileNotFoundError) as exc:
        write_text_atomic("/proc/x.json", "x")
    assert exc.value.filename == "/proc/x.json"
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]


def one_line_error(path, what="--save"):
    with pytest.raises(UserError) as exc:
        check_output_path(path, what)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(what)
    return msg


def test_check_output_path_refuses_a_directory(tmp_path):
    assert "is a directory" in one_line_error(tmp_path)
    assert "is a directory" in one_line_error("")


def test_check_output_path_refuses_proc_sys_dev():
    assert "not a regular file" in one_line_error("/proc/x.png", "--plot")
    assert "not a regular file" in one_line_error("/proc/self/status")
    assert "not a regular file" in one_line_error("/dev/null")


def test_check_output_path_refuses_a_path_under_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert "not a directory" in one_line_error(f / "out.json")
    assert "does not exist" in one_line_error(tmp_path / "missing" / "out.json")


def test_check_output_path_refuses_a_read_only_directory_simulated(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_common.tempfile, "mkstemp", denied)
    assert "cannot write in" in one_line_error(tmp_path / "out.csv", "--csv")


@pytest.mark.skipif(ROOT, reason="root writes into read-only directories")
def test_check_output_path_refuses_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert "cannot write in" in one_line_error(ro / "out.csv", "--csv")
    finally:
        ro.chmod(0o755)


def test_check_output_path_accepts_a_good_path_and_leaves_nothing(tmp_path):
    assert check_output_path(tmp_path / "ok.json") == tmp_path / "ok.json"
    assert list(tmp_path.iterdir()) == []
    assert check_output_path(None) is None


# ------------------------------------------------------------------ ceilings cache

BAD_CACHES = {
    "garbage": "{not json",
    "not utf-8": b"\xff\xfe{",
    "list": "[]",
    "negative": {"flops": {"fp32": -5.8e9}, "bandwidth": 1e10},
    "zero": {"flops": {"fp32": 0}, "bandwidth": 1e10},
    "nan": '{"flops": {"fp32": NaN}, "bandwidth": 1e10, "device_name": "cpu"}',
    "infinity": '{"flops": {"fp32": Infinity}, "bandwidth": 1e10, "device_name": "cpu"}',
    "true": {"flops": {"fp32": True}, "bandwidth": 1e10},
    "string": {"flops": {"fp32": "2e11"}, "bandwidth": 1e10},
    "flops list": {"flops": [1e11], "bandwidth": 1e10},
    "no flops": {"bandwidth": 1e10},
    "negative bandwidth": {"flops": {"fp32": 1e11}, "bandwidth": -1},
    "bandwidth true": {"flops": {"fp32": 1e11}, "bandwidth": True},
    "name a number": {"flops": {"fp32": 1e11}, "bandwidth": 1e10, "device_name": 3},
    "quick a string": {"flops": {"fp32": 1e11}, "bandwidth": 1e10, "quick": "no"},
}


@pytest.fixture
def fake_cpu(monkeypatch, tmp_path):
    """Calibrations in a fresh cache directory with a fake CPU measurement that is recorded."""
    monkeypatch.setenv("FLOPSCALE_CACHE_DIR", str(tmp_path))
    calls = []

    def measure(name, quick):
        calls.append(quick)
        return Ceilings(flops={"fp32": 2e11}, bandwidth=3e10, device_name=name, measured_at="now", quick=quick)

    monkeypatch.setattr(devices, "_measure_cpu", measure)
    return calls


def cache_files(tmp_path):
    return list(tmp_path.glob("ceilings-*.json"))


@pytest.mark.parametrize("kind", sorted(BAD_CACHES))
def test_a_corrupt_cache_is_ignored_with_a_warning_and_measured_again(fake_cpu, tmp_path, kind):
    calibrate("cpu", quick=True)
    (path,) = cache_files(tmp_path)
    bad = BAD_CACHES[kind]
    if isinstance(bad, dict):
        path.write_text(json.dumps({"device_name": "cpu", "measured_at": "then", **bad}))
    elif isinstance(bad, bytes):
        path.write_bytes(bad)
    else:
        path.write_text(bad)
    with pytest.warns(CacheWarning, match="ignoring the ceilings cache"):
        c = calibrate("cpu", quick=True)
    assert fake_cpu == [True, True]  # measured again, not read
    assert c.flops == {"fp32": 2e11} and c.bandwidth == 3e10
    assert json.loads(path.read_text())["flops"] == {"fp32": 2e11}  # and the cache repaired


def test_a_good_cache_is_used_without_warning(fake_cpu, tmp_path, recwarn):
    first = calibrate("cpu", quick=True)
    again = calibrate("cpu", quick=True)
    assert fake_cpu == [True] and again == Ceilings.from_dict(json.loads(cache_files(tmp_path)[0].read_text()))
    assert first.flops == again.flops
    assert not [w for w in recwarn if issubclass(w.category, CacheWarning)]


def test_impossible_measured_rates_are_not_kept_or_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("FLOPSCALE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(devices, "_measure_cpu", lambda name, quick: Ceilings(
        flops={"fp32": 2e11, "fp64": math.inf}, bandwidth=-1.0, device_name=name, quick=quick))
    c = calibrate("cpu", quick=True)
    assert c.flops == {"fp32": 2e11} and c.bandwidth is None
    assert set(c.details["discarded"]) == {"fp64", "bandwidth"}


def test_cached_negative_ceiling_never_gives_a_negative_mfu_through_the_cli(monkeypatch, tmp_path, capsys, fake_cpu):
    # the shape of the reported bug: a cache holding -5.8e9 FLOP/s made MFU -5.8e11 %
    calibrate("cpu", quick=True)
    (path,) = cache_files(tmp_path)
    d = json.loads(path.read_text())
    d["flops"]["fp32"] = -5.8e9
    path.write_text(json.dumps(d))
    with pytest.warns(CacheWarning):
        c = calibrate("cpu", quick=True)
    assert all(v > 0 for v in c.flops.values())


def hold_lock(directory: Path):
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / devices.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_calibration_waits_for_the_one_running_and_uses_its_result(fake_cpu, tmp_path):
    fd = hold_lock(tmp_path)
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("c", calibrate("cpu", quick=True)))
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and fake_cpu == []  # waiting, not measuring
    # the other calibration finishes: it writes its result and releases the lock
    path = devices._cache_file(devices._device_name(devices._torch_device("cpu")),
                               devices._versions(devices._torch_device("cpu")))
    path.write_text(json.dumps(Ceilings(flops={"fp32": 9e10}, bandwidth=1e10, device_name="cpu",
                                        measured_at="other", quick=True).to_dict()))
    os.close(fd)
    t.join(30)
    assert fake_cpu == [] and got["c"].measured_at == "other"


def test_a_measurement_taken_while_another_calibration_holds_the_lock_is_not_cached(fake_cpu, tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "CALIBRATION_LOCK_WAIT_S", 0.2)
    fd = hold_lock(tmp_path)
    try:
        with pytest.warns(CacheWarning, match="not cached"):
            c = calibrate("cpu", quick=True)
    finally:
        os.close(fd)
    assert fake_cpu == [True] and "cache_error" in c.details
    assert cache_files(tmp_path) == []


CONCURRENT = textwrap.dedent("""
    import json, sys, time, types
    from flopscale.profiler import devices
    log = sys.argv[1]
    def measure(name, quick):
        t0 = time.time()
        time.sleep(0.5)
        with open(log, "a") as f:
            f.write(json.dumps([t0, time.time()]) + "\\n")
        return devices.Ceilings(flops={"fp32": 2e11}, bandwidth=3e10, device_name=name, quick=quick)
    devices._measure_cpu = measure
    # no torch needed to test the lock: a fixed CPU device, name and versions
    devices._torch_device = lambda device=None: types.SimpleNamespace(type="cpu")
    devices._device_name = lambda dev: "test-cpu"
    devices._versions = lambda dev: {"threads": 1}
    print(devices.calibrate("cpu", quick=True).flops["fp32"])
""")


def test_concurrent_calibrations_in_two_processes_do_not_measure_at_once(tmp_path):
    script = tmp_path / "cal.py"
    script.write_text(CONCURRENT)
    log = tmp_path / "log.jsonl"
    env_ = {**os.environ, "FLOPSCALE_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, str(script), str(log)], env=env_, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all(float(o.strip()) == 2e11 for o, _ in outs)
    spans = [json.loads(line) for line in log.read_text().splitlines()]
    # one measured; the other waited and read its result (or, had both measured, never at once)
    assert len(spans) == 1 or spans[0][1] <= spans[1][0] or spans[1][1] <= spans[0][0], spans


# ------------------------------------------------------------------ env: TRITON_INTERPRET

@pytest.mark.parametrize("value,on", [
    ("1", True), ("true", True), ("TRUE", True), ("on", True), ("yes", True),
    ("0", False), ("false", False), ("False", False), ("no", False), ("off", False), ("", False),
])
def test_env_reads_triton_interpret_as_triton_does(monkeypatch, value, on):
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert env.interpreter_on() is on
    info = {"triton_interpreter": env.interpreter_on(), "triton_interpret_env": value}
    assert env.interpreter_text(info).startswith("on" if on else "off")


def test_env_agrees_with_triton_itself(monkeypatch):
    triton_knobs = pytest.importorskip("triton.knobs")
    for value in ("1", "false", "0", "", "no", "y", " 1", "2"):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert env.interpreter_on() == bool(triton_knobs.runtime.interpret), value


def test_env_json_and_text_report_false_as_off(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "false")
    assert cli.main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["triton_interpreter"] is False and info["triton_interpret_env"] == "false"
    assert cli.main(["env"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("Triton interpreter")]
    assert line and line[0].split()[2] == "off"


@pytest.mark.parametrize("value", ["1", "true", "y", " 1", "1 ", "false", "0", "", "no", "off"])
def test_env_agrees_with_the_kernels(monkeypatch, value):
    from flopscale.kernels._runtime import interpreter_on

    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert interpreter_on() == env.interpreter_on()
