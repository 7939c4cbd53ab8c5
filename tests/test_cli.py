"""The flopscale command: help, env, and honest 'not yet' for unlanded subcommands."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from flopscale.profiler.cli import build_parser, main
from flopscale.profiler.commands import COMMANDS


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flopscale", *args], capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_subcommand():
    text = build_parser().format_help()
    for name in ("plan", "profile", "audit", "fit", "allocate", "bench", "inspect", "env"):
        assert name in text


@pytest.mark.parametrize("name", COMMANDS)
def test_every_subcommand_has_help_and_json(name, capsys):
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "--json" in capsys.readouterr().out


def test_env_json_is_an_object_with_versions():
    proc = run_cli("env", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    import torch

    assert info["torch"] == torch.__version__
    assert info["python"].count(".") == 2
    assert isinstance(info["cuda_devices"], list)
    assert len(info["cuda_devices"]) == torch.cuda.device_count()
    assert isinstance(info["nvml"]["available"], bool)
    if not info["nvml"]["available"]:
        assert info["nvml"]["reason"]


def test_env_text_says_no_cuda_device_on_cpu():
    import torch

    proc = run_cli("env")
    assert proc.returncode == 0, proc.stderr
    if not torch.cuda.is_available():
        assert "no CUDA device" in proc.stdout
    assert "triton" in proc.stdout


def test_no_subcommand_prints_help_and_fails():
    proc = run_cli()
    assert proc.returncode == 2
    assert "plan" in proc.stdout


def test_user_error_is_one_line_without_traceback():
    proc = run_cli("profile", "--definitely-not-an-option")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [
    ("allocate", "--compute", "nan"),
    ("plan", "--gpus", "abc"),
    ("allocate", "--compute", "1e22", "--plot", "/proc/x.png"),
])
def test_bad_input_through_the_installed_entry_point_is_one_line_and_exit_2(args):
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"flopscale {args[0]}: error: "), proc.stderr
    assert proc.stdout == ""
