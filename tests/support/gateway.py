"""Building blocks for gateway tests: sample instances, configurations, a running node."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from deid_core.keys import ProjectKey
from gateway.config import GatewayConfig, parse_config
from gateway.events import EventBus, GatewayEvent
from gateway.node import GatewayNode

KEY_TEXT = "k" * 16 + "0123456789abcdef0123456789abcdef"
MODALITY_AE = "MODALITY"
GATEWAY_AE = "DEIDGW"


def write_instances(
    folder: Path,
    studies: int,
    per_study: int,
    source: str = "CT_small.dcm",
    changes: dict[str, Any] | None = None,
) -> dict[str, list[Path]]:
    """`studies` x `per_study` instances derived from a pydicom test file, each with new UIDs and
    a recognisable patient name. Returns {original study UID: files}."""
    folder.mkdir(parents=True, exist_ok=True)
    path = get_testdata_file(source, download=False)
    assert path is not None, source
    template = pydicom.dcmread(path)
    template.PatientName = "TEST^IDENTIFIABLE"
    template.PatientID = "PID-4711"
    for keyword, value in (changes or {}).items():
        setattr(template, keyword, value)
    out: dict[str, list[Path]] = {}
    for s in range(studies):
        study = generate_uid()
        series = generate_uid()
        files = []
        for i in range(per_study):
            ds = copy.deepcopy(template)
            ds.StudyInstanceUID = study
            ds.SeriesInstanceUID = series
            ds.SOPInstanceUID = generate_uid()
            ds.InstanceNumber = i + 1
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            target = folder / f"s{s:02d}_{i:04d}.dcm"
            ds.save_as(target, enforce_file_format=True)
            files.append(target)
        out[study] = files
    return out


def config_dict(
    work: Path,
    key_file: Path,
    destinations: dict[str, dict[str, Any]] | None = None,
    routes: list[dict[str, Any]] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "project": {"key": {"file": str(key_file)}},
        "node": {
            "ae_title": GATEWAY_AE,
            "host": "127.0.0.1",
            "port": 0,
            "allowed_callers": [{"ae_title": MODALITY_AE, "host": "127.0.0.1"}],
        },
        "storage": {
            "spool_dir": str(work / "spool"),
            "outbox_dir": str(work / "outbox"),
            "quarantine_dir": str(work / "quarantine"),
            "journal": str(work / "journal.sqlite"),
            "study_stable_seconds": 0.5,
            "min_free_bytes": 0,
            "high_water_percent": 100,
        },
        "destinations": destinations or {},
        "routes": routes
        if routes is not None
        else ([{"name": "all", "destinations": sorted(destinations)}] if destinations else []),
        "logging": {"level": "warning"},
        # A free port per node: parallel test runs must not fight over 9477.
        "metrics": {"enabled": True, "address": "127.0.0.1", "port": 0},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return data


def make_key_file(folder: Path) -> Path:
    path = folder / "project.key"
    path.write_text(KEY_TEXT + "\n")
    return path


def destination(host: str, port: int, ae_title: str, **extra: Any) -> dict[str, Any]:
    retry = {"initial_delay_s": 0.2, "max_delay_s": 1.0, "max_attempts": 50, "jitter": 0.2}
    retry.update(extra.pop("retry", {}))
    return {
        "ae_title": ae_title,
        "host": host,
        "port": port,
        "retry": retry,
        "connect_timeout_s": 3,
        **extra,
    }


class EventRecorder:
    def __init__(self) -> None:
        self.events: list[GatewayEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: GatewayEvent) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]


@contextmanager
def running_node(
    cfg: GatewayConfig, key_text: str = KEY_TEXT, **node_options: Any
) -> Iterator[tuple[GatewayNode, EventRecorder]]:
    bus = EventBus()
    recorder = EventRecorder()
    bus.subscribe(recorder)
    node = GatewayNode(cfg, ProjectKey(key_text.encode()), bus, drain_timeout=10, **node_options)
    node.start()
    try:
        yield node, recorder
    finally:
        node.shutdown()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def parse(data: dict[str, Any]) -> GatewayConfig:
    return parse_config(data, "test-config")
