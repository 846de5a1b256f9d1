"""The cache survives a writer killed mid-write and two concurrent writer processes."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from zsad_bench.features import FeatureCache

WORKER = Path(__file__).with_name("cache_worker.py")
_spec = importlib.util.spec_from_file_location("cache_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def _run(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k].to(torch.float16).float()) for k in a)


def test_a_writer_killed_mid_write_leaves_the_old_entry_valid(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put(worker.SPEC, "img-0", worker.tensors(0))  # a complete entry, about to be overwritten
    proc = _run("half", str(tmp_path))
    try:
        assert proc.stdout.readline().strip() == "HALF", proc.stderr.read()
        tmp_files = list(tmp_path.rglob(".*.tmp"))
        assert len(tmp_files) == 1
        assert tmp_files[0].stat().st_size > 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    entry = cache.get(worker.SPEC, "img-0")
    assert entry is not None
    assert _equal(entry, worker.tensors(0))
    assert cache.verify().corrupt == []
    old = time.time() - 3600
    os.utime(tmp_files[0], (old, old))  # an abandoned temp file is cleaned once old
    report = cache.verify()
    assert report.removed_tmp == 1
    assert not list(tmp_path.rglob(".*.tmp"))
    assert cache.info().entries == 1


def test_a_writer_killed_before_its_first_entry_leaves_no_entry(tmp_path):
    proc = _run("half", str(tmp_path))
    try:
        assert proc.stdout.readline().strip() == "HALF", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    cache = FeatureCache(tmp_path)
    assert cache.get(worker.SPEC, "img-0") is None
    assert cache.info().entries == 0


def test_two_concurrent_writers_leave_a_consistent_cache(tmp_path):
    go = tmp_path / "go"
    root = tmp_path / "cache"
    procs = [_run("write", str(root), "0", "30", str(go)), _run("write", str(root), "10", "40", str(go))]
    time.sleep(0.2)
    go.touch()  # start both at once: entries 10..29 are written by both, three times each
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "DONE", err
    cache = FeatureCache(root)
    report = cache.verify()
    assert report.checked == 40
    assert report.corrupt == []
    for i in range(40):
        entry = cache.get(worker.SPEC, f"img-{i}")
        assert entry is not None, i
        assert _equal(entry, worker.tensors(i)), i
    assert not list(root.rglob(".*.tmp"))
