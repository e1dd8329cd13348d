"""`deid-gateway demo`: the whole path on one machine, in about half a minute.

A local research archive (a storage SCP of ours that files what it receives in a folder — Orthanc
is not used here because it cannot listen on loopback only, and a demo should not open an
unauthenticated archive on every interface), the gateway on loopback with a fresh demo key,
sample studies built from pydicom's bundled test files, and a summary: what arrived in the archive
(de-identified) and what was quarantined and why.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from deid_core.keys import ProjectKey
from dicom_io.header import read_file_meta
from dicom_io.scp import AccessPolicy, AssociationInfo, ReceivedInstance, StorageSCP
from dicom_io.scu import StoreTarget, send_files
from gateway.commands import out
from gateway.config import GatewayConfig, parse_config
from gateway.events import EventBus
from gateway.logs import EventLog, configure_logging
from gateway.node import GatewayNode


class FolderArchive:
    """A minimal research archive: accepts any caller, files each instance under its SOP
    Instance UID (these are de-identified UIDs), overwriting duplicates like an archive does."""

    def __init__(self, folder: Path, ae_title: str = "ARCHIVE") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.received = 0
        self._lock = threading.Lock()
        self.scp = StorageSCP(
            policy=AccessPolicy(ae_title=ae_title, allow_any_caller=True), sink=self
        )

    def start(self) -> tuple[str, int]:
        return self.scp.start()

    def stop(self) -> None:
        self.scp.stop_accepting()
        self.scp.wait_idle(5.0)

    def instances(self) -> list[Path]:
        return sorted(self.folder.glob("*.dcm"))

    # ReceiveSink
    def association_accepted(self, info: AssociationInfo) -> None:
        pass

    def association_rejected(self, reason: str) -> None:
        pass

    def association_closed(self, info: AssociationInfo, instances: int, aborted: bool) -> None:
        pass

    def refused(self, info: AssociationInfo, reason: str, status: int) -> None:
        pass

    def store(self, instance: ReceivedInstance) -> None:
        path = self.folder / f"{instance.sop_instance_uid}.dcm"
        path.write_bytes(instance.file_meta + instance.dataset)
        with self._lock:
            self.received += 1


def _samples(folder: Path) -> list[Path]:
    """Sample studies from pydicom's bundled files, with fresh UIDs so that every run is new."""
    folder.mkdir(parents=True, exist_ok=True)
    plans = [
        ("CT_small.dcm", 3, {}),  # a CT study of 3 instances: forwarded
        ("MR_small.dcm", 2, {}),  # an MR study: forwarded
        # secondary captures (JPEG, forwarded compressed as received): one says it carries
        # burned-in text and is quarantined, the other passes
        ("SC_rgb_jpeg_gdcm.dcm", 1, {"BurnedInAnnotation": "YES"}),
        ("SC_rgb_jpeg_gdcm.dcm", 1, {"BurnedInAnnotation": "NO"}),
        ("rtplan.dcm", 1, {}),  # no route for RT plans: quarantined
    ]
    paths: list[Path] = []
    for name, count, changes in plans:
        source = get_testdata_file(name, download=False)
        if source is None:
            continue
        study = generate_uid()
        for _ in range(count):
            ds = pydicom.dcmread(source)
            ds.StudyInstanceUID = study
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientName = "DEMO^PATIENT"
            ds.PatientID = "DEMO-123"
            for keyword, value in changes.items():
                setattr(ds, keyword, value)
            path = folder / f"{len(paths):03d}_{name.split('.')[0]}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def demo_config(work: Path, archive_port: int) -> GatewayConfig:
    return parse_config(
        {
            "project": {"key": {"file": str(work / "demo.key")}},
            "node": {
                "ae_title": "DEIDGW",
                "host": "127.0.0.1",
                "port": 0,
                "allowed_callers": [{"ae_title": "DEMO_MODALITY", "host": "127.0.0.1"}],
            },
            "storage": {
                "spool_dir": str(work / "spool"),
                "outbox_dir": str(work / "outbox"),
                "quarantine_dir": str(work / "quarantine"),
                "journal": str(work / "journal.sqlite"),
                "study_stable_seconds": 1.0,
                "min_free_bytes": 0,
                "high_water_percent": 100,
            },
            "destinations": {
                "archive": {
                    "ae_title": "ARCHIVE",
                    "host": "127.0.0.1",
                    "port": archive_port,
                    "retry": {"initial_delay_s": 0.5, "max_delay_s": 2},
                }
            },
            "routes": [
                {
                    "name": "ct-mr",
                    "match": {"modality": ["CT", "MR"]},
                    "destinations": ["archive"],
                },
                {
                    "name": "captures",
                    "match": {"sop_class": ["SecondaryCaptureImageStorage"]},
                    "pixels": "quarantine_burned_in",
                    "destinations": ["archive"],
                },
            ],
            "logging": {"level": "warning"},
        },
        "demo",
    )


def run_demo(workdir: Path | None = None, timeout: float = 60.0) -> dict[str, int]:
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory(prefix="deidgw-demo-") as tmp:
        work = (workdir or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        key_file = work / "demo.key"
        if not key_file.exists():
            key_file.write_text(ProjectKey.generate().export_text() + "\n")
            key_file.chmod(0o600)
        archive = FolderArchive(work / "archive")
        _, archive_port = archive.start()
        cfg = demo_config(work, archive_port)
        events = EventBus()
        if workdir is not None:
            events.subscribe(EventLog())
        node = GatewayNode(cfg, cfg.load_key(), events, monitor=False)
        try:
            host, port = node.start()
            out.print(
                f"gateway DEIDGW listening on {host}:{port}; archive ARCHIVE on port {archive_port}"
            )
            samples = _samples(work / "samples")
            target = StoreTarget("DEIDGW", host, port, "DEMO_MODALITY")
            statuses = send_files(target, samples)
            accepted = sum(1 for s in statuses if s == 0)
            out.print(
                f"sent {len(samples)} sample instances from pydicom's test files; "
                f"{accepted} acknowledged"
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                counts = node.backlog().journal_states
                if counts.get("received", 0) == 0 and counts.get("queued", 0) == 0:
                    break
                time.sleep(0.2)
            counts = node.backlog().journal_states
            assert node.storage is not None
            entries = node.storage.quarantine.list()
        finally:
            node.shutdown()
            archive.stop()
        arrived = archive.instances()
        out.print(f"\narchive received {len(arrived)} instance(s):")
        for path in arrived:
            data = path.read_bytes()
            meta = read_file_meta(data)
            ds = pydicom.dcmread(io.BytesIO(data))
            out.print(
                f"  {ds.get('Modality', '?'):<3} patient {ds.get('PatientName', '')!s:<20} "
                f"SOP Instance UID {ds.SOPInstanceUID} (TS {meta.transfer_syntax})"
            )
        out.print(f"\nquarantined {len(entries)} instance(s):")
        for e in entries:
            out.print(
                f"  {e.id}  reason {e.reason:<22} route {e.route or '-'}  study {e.study_key}"
            )
        out.print(
            f"\njournal: {counts.get('forwarded', 0)} forwarded, "
            f"{counts.get('quarantined', 0)} quarantined, {counts.get('received', 0)} waiting"
        )
        if workdir is None:
            out.print("(temporary demo folder removed; pass --workdir DIR to keep it)")
        return {
            "sent": len(samples),
            "acknowledged": accepted,
            "archived": len(arrived),
            "quarantined": len(entries),
        }
