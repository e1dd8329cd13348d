"""The status page's figures, read from the journal (not from Prometheus, which a site may lack).

Over a window of the last hours, in equal buckets:

- throughput: instances received (by arrival time) and copies delivered (by the time the
  destination acknowledged them);
- backlog: instances received but not yet finished (forwarded or quarantined) at each bucket's
  end — the backlog at the window's start plus arrivals minus finishes;
- rejections: quarantine entries created, by reason, and their share of the instances received.

Plus the state right now: instances per state, copies waiting per destination, held entries per
reason. Counts only: nothing here names a study or a patient.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.review.reader import JournalReader

#: Instance states that end an instance's way through the gateway.
FINISHED = ("forwarded", "quarantined")


@dataclass(frozen=True)
class StatusReport:
    hours: int
    start: float
    bucket_s: float
    bucket_starts: list[float]
    received: list[int]
    delivered: list[int]
    backlog: list[int]
    rejections: dict[str, list[int]]
    states_now: dict[str, int]
    outbox_now: dict[str, int]
    held_now: dict[str, int]
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def rejection_share(self) -> dict[str, float]:
        """Per reason: entries in the window per instance received in the window."""
        received = sum(self.received)
        return {r: (sum(v) / received if received else 0.0) for r, v in self.rejections.items()}


def _per_bucket(
    reader: JournalReader, sql: str, args: tuple[float, ...], start: float, bucket_s: float, n: int
) -> list[int]:
    counts = [0] * n
    for row in reader.rows(sql, args):
        t = row[0]
        if t is None:
            continue
        i = int((float(t) - start) // bucket_s)
        if 0 <= i < n:
            counts[i] += int(row[1])
    return counts


def read_status(reader: JournalReader, hours: int = 24, now: float | None = None) -> StatusReport:
    now = time.time() if now is None else now
    buckets = 24 if hours >= 24 else max(hours * 4, 6)
    bucket_s = hours * 3600.0 / buckets
    # align the buckets to whole bucket lengths so the axis reads well and pages agree
    end = (now // bucket_s + 1) * bucket_s
    start = end - buckets * bucket_s
    starts = [start + i * bucket_s for i in range(buckets)]
    # group in SQL by bucket (one row per bucket, not per instance)
    bucket_expr = f"CAST((({{col}}) - {start!r}) / {bucket_s!r} AS INTEGER)"

    def grouped(table: str, col: str, where: str) -> str:
        b = bucket_expr.format(col=col)
        return f"SELECT MIN({col}), COUNT(*) FROM {table} WHERE {col} >= ? AND {where} GROUP BY {b}"

    received = _per_bucket(
        reader, grouped("instances", "received_at", "1"), (start,), start, bucket_s, buckets
    )
    delivered = _per_bucket(
        reader,
        grouped("outbox", "updated_at", "state = 'sent'"),
        (start,),
        start,
        bucket_s,
        buckets,
    )
    finished = _per_bucket(
        reader,
        grouped("instances", "updated_at", "state IN ('forwarded', 'quarantined')"),
        (start,),
        start,
        bucket_s,
        buckets,
    )
    before = reader.rows(
        "SELECT COUNT(*) FROM instances WHERE received_at < ?"
        " AND NOT (state IN ('forwarded', 'quarantined') AND updated_at < ?)",
        (start, start),
    )
    level = int(before[0][0]) if before else 0
    backlog = []
    for arrived, done in zip(received, finished, strict=True):
        level = max(0, level + arrived - done)
        backlog.append(level)

    rejections: dict[str, list[int]] = {}
    b = bucket_expr.format(col="created_at")
    for row in reader.rows(
        f"SELECT reason, MIN(created_at), COUNT(*) FROM quarantine WHERE created_at >= ?"
        f" GROUP BY reason, {b}",
        (start,),
    ):
        i = int((float(row[1]) - start) // bucket_s)
        if 0 <= i < buckets:
            rejections.setdefault(str(row[0]), [0] * buckets)[i] += int(row[2])

    states_now = {s: 0 for s in ("received", "queued", "forwarded", "quarantined")}
    for row in reader.rows("SELECT state, COUNT(*) FROM instances GROUP BY state"):
        states_now[str(row[0])] = int(row[1])
    outbox_now = {
        str(r[0]): int(r[1])
        for r in reader.rows(
            "SELECT destination, COUNT(*) FROM outbox WHERE state='pending' GROUP BY destination"
        )
    }
    held_now = {
        str(r[0]): int(r[1])
        for r in reader.rows(
            "SELECT reason, COUNT(*) FROM quarantine WHERE state='held' GROUP BY reason"
            " ORDER BY COUNT(*) DESC"
        )
    }
    totals = {
        "received": sum(received),
        "delivered": sum(delivered),
        "quarantined": sum(sum(v) for v in rejections.values()),
    }
    return StatusReport(
        hours=hours,
        start=start,
        bucket_s=bucket_s,
        bucket_starts=starts,
        received=received,
        delivered=delivered,
        backlog=backlog,
        rejections=dict(sorted(rejections.items())),
        states_now=states_now,
        outbox_now=outbox_now,
        held_now=held_now,
        totals=totals,
    )
