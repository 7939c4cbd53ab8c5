"""Atomic writes leave no partial file; JSON output never carries NaN."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flopscale.profiler._io import atomic_path, dumps, write_text_atomic


def test_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"partial": ')
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_successful_write_replaces_the_target(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_missing_directory_is_an_error_unless_asked_to_create(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_text_atomic(tmp_path / "no" / "x.txt", "x")
    write_text_atomic(tmp_path / "no" / "x.txt", "x", make_parents=True)
    assert (tmp_path / "no" / "x.txt").read_text() == "x"


def test_dumps_turns_non_finite_and_numpy_values_into_plain_json():
    text = dumps({"a": math.nan, "b": np.float64(2.5), "c": np.arange(3), "d": (math.inf, 1)})
    assert json.loads(text) == {"a": None, "b": 2.5, "c": [0, 1, 2], "d": [None, 1]}


def test_concurrent_writers_of_one_file_each_leave_a_complete_file(tmp_path):
    import threading

    target = tmp_path / "out.json"
    texts = [json.dumps({"writer": i, "rows": list(range(20000))}) for i in range(4)]

    def write(text):
        for _ in range(5):
            write_text_atomic(target, text)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert target.read_text() in texts  # one writer's whole file, never a mix or a prefix
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
