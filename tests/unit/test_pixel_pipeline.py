"""The pipeline's pixel jobs, with a scripted executor (no model, no broker): journaled before
submission, re-submitted when no result comes, deferred while the executor refuses, a duplicate
result ignored, failures quarantined; nothing forwarded that was not edited and checked."""

from __future__ import annotations

import io
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from deid_core.errors import RetryableError
from deid_core.keys import ProjectKey
from deid_core.seeds import derive_seed
from gateway.events import EventBus, LesionGateDecided, QuarantineReason
from gateway.ingest import study_key
from gateway.node import Storage
from gateway.pipeline import Pipeline
from gateway.pixel_jobs import PixelJob, PixelResult
from tests.support.gateway import KEY_TEXT, config_dict, make_key_file, parse
from tests.support.photos import PATIENT_NAME, photo_route, write_photos

KEY = ProjectKey(KEY_TEXT.encode())


class ScriptedExecutor:
    """Takes jobs into a list; the test decides what comes back, and when."""

    lost_on_restart = False
    probe = None

    def __init__(self, timeout: float = 60.0, max_attempts: int = 3) -> None:
        self.result_timeout_s = timeout
        self.max_attempts = max_attempts
        self.retry_delay_s = 5.0
        self.jobs: list[PixelJob] = []
        self.refuse = False
        self.on_result = None

    def start(self, on_result) -> None:  # type: ignore[no-untyped-def]
        self.on_result = on_result

    def submit(self, job: PixelJob) -> None:
        if self.refuse:
            raise RetryableError("broker away")
        self.jobs.append(job)

    def stop(self, timeout: float = 30.0) -> None:
        pass


def _accepted(job: PixelJob, **extra: object) -> PixelResult:
    """The worker's answer for a photograph whose lesion survived (here: pixels inverted)."""
    return PixelResult(
        job_id=job.job_id,
        route=job.route,
        status="accepted",
        frames=255 - job.frames,
        reason="accepted",
        details={"iou": 0.9, "frames": job.frames.shape[0]},
        provenance="FlowEdit (test)",
        test_model=True,
        **extra,  # type: ignore[arg-type]
    )


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        executor: ScriptedExecutor,
        photos: int = 3,
        override: dict[str, object] | None = None,
    ) -> None:
        data = config_dict(
            tmp_path / "gw",
            make_key_file(tmp_path),
            destinations={"archive": {"ae_title": "A", "host": "127.0.0.1", "port": 104}},
            routes=[photo_route(tmp_path / "model-on-the-workers", ["archive"])],
            executor={"kind": "celery"},
        )
        self.cfg = parse(data)
        self.storage = Storage.open(self.cfg)
        self.events = EventBus()
        self.decided: list[LesionGateDecided] = []
        self.events.subscribe(
            lambda e: self.decided.append(e) if isinstance(e, LesionGateDecided) else None
        )
        self.executor = executor
        self.pipeline = self._pipeline()
        self.photos = write_photos(tmp_path / "in", photos, per_study=photos, lesion_every=1)
        self.study = study_key(KEY, self.photos[0].study_instance_uid)
        for photo in self.photos:
            spooled = self.storage.spool.write((photo.path.read_bytes(),))
            self.storage.journal.add_received(spooled.relative_path, self.study, override=override)

    def _pipeline(self) -> Pipeline:
        s = self.storage
        pipeline = Pipeline(
            self.cfg, KEY, s.journal, s.spool, s.outbox, s.quarantine, self.events,
            executor=self.executor,
        )  # fmt: skip
        pipeline.start()
        return pipeline

    def restart(self) -> None:
        self.pipeline.stop()
        self.pipeline = self._pipeline()

    def states(self) -> dict[str, int]:
        return self.storage.journal.state_counts()

    def outbox_datasets(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(p) for p in sorted(self.cfg.storage.outbox_dir.glob("*/*/*.dcm"))]


def test_jobs_are_journaled_and_carry_keyed_seeds(tmp_path: Path) -> None:
    h = Harness(tmp_path, ScriptedExecutor())
    result = h.pipeline.process_study(h.study)
    assert (result.editing, result.queued, result.quarantined) == (3, 0, 0)
    assert h.states()["editing"] == 3
    assert h.storage.journal.pixel_job_count() == 3
    by_uid = {p.sop_instance_uid: p for p in h.photos}
    for job in h.executor.jobs:
        assert job.attempt == 1 and job.route == "photos"
        assert job.frames.shape == (1, 64, 64, 3)
        # which photograph? the one whose keyed seeds these are
        [uid] = [u for u in by_uid if derive_seed(KEY, u, "photos", "identity", 0) == job.seeds[0]]
        assert job.twin_seeds[0] == derive_seed(KEY, uid, "photos", "twin", 0)
        assert job.seeds[0] != job.twin_seeds[0]


def test_result_makes_a_derived_deidentified_instance(tmp_path: Path) -> None:
    h = Harness(tmp_path, ScriptedExecutor())
    h.pipeline.process_study(h.study)
    for job in h.executor.jobs:
        h.pipeline.complete_pixel_job(_accepted(job))
    assert h.states()["queued"] == 3 and h.storage.journal.pixel_job_count() == 0
    out = h.outbox_datasets()
    assert len(out) == 3
    originals = {p.sop_instance_uid for p in h.photos}
    expected_uids = {h.pipeline.derived_uid(u, "flowedit") for u in originals}
    assert {ds.SOPInstanceUID for ds in out} == expected_uids
    for ds in out:
        assert str(ds.PatientName) != PATIENT_NAME
        assert ds.RecognizableVisualFeatures == "NO"
        assert "FlowEdit (test)" in ds.DerivationDescription
        assert ds.pixel_array.mean() < 128  # the worker's (inverted) pixels, not the original's
    assert [e.outcome for e in h.decided] == ["accepted"] * 3


def test_lost_job_is_submitted_again_and_a_late_duplicate_is_ignored(tmp_path: Path) -> None:
    h = Harness(tmp_path, ScriptedExecutor(timeout=60.0), photos=1)
    h.pipeline.process_study(h.study)
    [first] = h.executor.jobs
    assert h.pipeline.resubmit_due() == 0 and len(h.executor.jobs) == 1  # not due yet
    h.pipeline.resubmit_due(now=first_due(h) + 1)
    assert len(h.executor.jobs) == 2
    second = h.executor.jobs[1]
    assert second.job_id == first.job_id and second.attempt == 2
    assert second.seeds == first.seeds and np.array_equal(second.frames, first.frames)
    h.pipeline.complete_pixel_job(_accepted(second))
    h.pipeline.complete_pixel_job(_accepted(first))  # the lost one turns up after all
    assert h.states()["queued"] == 1
    assert len(h.outbox_datasets()) == 1


def first_due(h: Harness) -> float:
    jobs = h.storage.journal.pixel_jobs_due(math.inf)
    return min(j.due_at for j in jobs)


def test_executor_refusing_defers_without_counting_attempts(tmp_path: Path) -> None:
    executor = ScriptedExecutor()
    executor.refuse = True
    h = Harness(tmp_path, executor, photos=2)
    assert h.pipeline.process_study(h.study).editing == 2  # accepted into the journal
    assert executor.jobs == [] and h.states()["editing"] == 2
    [due] = {round(j.due_at) for j in h.storage.journal.pixel_jobs_due(math.inf)}
    assert all(j.attempts == 0 for j in h.storage.journal.pixel_jobs_due(math.inf))
    assert h.pipeline.resubmit_due(now=due + 1) == 0  # still refused
    executor.refuse = False
    h.pipeline.resubmit_due(now=due + 10)
    assert [j.attempt for j in executor.jobs] == [1, 1]


def test_no_result_after_the_last_attempt_quarantines(tmp_path: Path) -> None:
    h = Harness(tmp_path, ScriptedExecutor(timeout=10.0, max_attempts=2), photos=1)
    h.pipeline.process_study(h.study)
    h.pipeline.resubmit_due(now=first_due(h) + 1)
    assert len(h.executor.jobs) == 2
    assert h.pipeline.resubmit_due(now=first_due(h) + 1) == 1
    [entry] = h.storage.quarantine.list()
    assert entry.reason == QuarantineReason.PIXEL_STEP_FAILED.value
    assert h.states()["quarantined"] == 1 and h.storage.journal.pixel_job_count() == 0
    assert h.outbox_datasets() == []


def test_rejection_is_quarantined_with_its_artifacts(tmp_path: Path) -> None:
    h = Harness(tmp_path, ScriptedExecutor(), photos=1)
    h.pipeline.process_study(h.study)
    [job] = h.executor.jobs
    rejected = PixelResult(
        job_id=job.job_id,
        route=job.route,
        status="rejected",
        reason="lesion_iou_below_threshold",
        details={"iou": 0.31},
        artifacts={"panel.png": b"png", "original.png": b"o", "deidentified.png": b"d"},
    )
    h.pipeline.complete_pixel_job(rejected)
    [row] = h.storage.quarantine.list()
    entry = h.storage.quarantine.show(row.id)
    assert row.reason == "lesion_iou_below_threshold"
    assert entry.details["iou"] == 0.31
    assert (entry.folder / "panel.png").read_bytes() == b"png"
    kept = pydicom.dcmread(entry.folder / "instance.dcm")
    assert str(kept.PatientName) == PATIENT_NAME  # the received original, for a reviewer
    assert h.outbox_datasets() == []


@pytest.mark.parametrize("retryable", [False, True])
def test_failed_job_is_retried_only_when_retrying_can_help(tmp_path: Path, retryable: bool) -> None:
    h = Harness(tmp_path, ScriptedExecutor(), photos=1)
    h.pipeline.process_study(h.study)
    [job] = h.executor.jobs
    failed = PixelResult(
        job_id=job.job_id,
        route=job.route,
        status="failed",
        reason="OutOfMemoryError",
        retryable=retryable,
    )
    h.pipeline.complete_pixel_job(failed)
    if retryable:
        assert h.states()["editing"] == 1
        h.pipeline.resubmit_due()
        assert len(h.executor.jobs) == 2
    else:
        [row] = h.storage.quarantine.list()
        assert row.reason == QuarantineReason.PIXEL_STEP_FAILED.value
    assert h.outbox_datasets() == []


def test_result_that_does_not_fit_the_photograph_is_quarantined(tmp_path: Path) -> None:
    h = Harness(tmp_path, ScriptedExecutor(), photos=1)
    h.pipeline.process_study(h.study)
    [job] = h.executor.jobs
    wrong = _accepted(replace(job, frames=np.zeros((1, 32, 32, 3), np.uint8)))
    h.pipeline.complete_pixel_job(wrong)
    [row] = h.storage.quarantine.list()
    assert row.reason == QuarantineReason.PIXEL_STEP_FAILED.value
    assert h.outbox_datasets() == []


def test_jobs_survive_a_restart_and_an_in_process_executor_resubmits_them(
    tmp_path: Path,
) -> None:
    executor = ScriptedExecutor()
    h = Harness(tmp_path, executor, photos=2)
    h.pipeline.process_study(h.study)
    executor.jobs.clear()  # the process dies with its in-memory queue
    executor.lost_on_restart = True  # type: ignore[misc]
    h.restart()
    assert h.states()["editing"] == 2
    h.pipeline.process_ready()
    assert sorted(j.attempt for j in executor.jobs) == [2, 2]
    for job in list(executor.jobs):
        h.pipeline.complete_pixel_job(_accepted(job))
    assert h.states()["queued"] == 2
    assert len({ds.SOPInstanceUID for ds in h.outbox_datasets()}) == 2


def test_spool_bytes_are_what_the_job_was_made_from(tmp_path: Path) -> None:
    h = Harness(tmp_path, ScriptedExecutor(), photos=1)
    h.pipeline.process_study(h.study)
    [job] = h.executor.jobs
    ds = pydicom.dcmread(io.BytesIO(h.photos[0].path.read_bytes()))
    assert np.array_equal(job.frames[0], ds.pixel_array)


def _rejected(job: PixelJob) -> PixelResult:
    return PixelResult(
        job_id=job.job_id,
        route=job.route,
        status="rejected",
        frames=255 - job.frames,  # the worker sends its edit with a rejection too
        reason="lesion_iou_below_threshold",
        details={"iou": 0.4},
        artifacts={"panel.png": b"png"},
        provenance="FlowEdit (test)",
        test_model=True,
    )


def test_a_reviewer_waiving_the_gate_gets_the_edit_forwarded(tmp_path: Path) -> None:
    """Released with waive_gate: the photograph is edited again (same seeds) and its edit is
    forwarded despite the gate; never the original pixels."""
    h = Harness(tmp_path, ScriptedExecutor(), photos=1, override={"waive_gate": True})
    h.pipeline.process_study(h.study)
    [job] = h.executor.jobs
    h.pipeline.complete_pixel_job(_rejected(job))
    [ds] = h.outbox_datasets()
    assert np.array_equal(ds.pixel_array, 255 - job.frames[0])
    assert ds.RecognizableVisualFeatures == "NO"
    assert h.storage.quarantine.list() == []


def test_without_a_waiver_the_same_answer_is_quarantined(tmp_path: Path) -> None:
    h = Harness(tmp_path, ScriptedExecutor(), photos=1)
    h.pipeline.process_study(h.study)
    [job] = h.executor.jobs
    h.pipeline.complete_pixel_job(_rejected(job))
    assert h.outbox_datasets() == []
    [row] = h.storage.quarantine.list()
    assert row.reason == "lesion_iou_below_threshold"
