"""`make bench-quota`: the monthly version quota count (every CreateVersion and every upload
that creates a version runs it under the org's lock) on a throwaway PostgreSQL, before and
after migration 0014, in the same run.

Seeds `--orgs` orgs with `--versions` versions each created this month, once on a database
migrated to 0013 (the count walks every org's versions of the month through
ix_model_versions_created_at and looks up each one's org) and once on head (the org is on
the version row: it walks (org_id, created_at) for the org alone), then times one org's
count on each and prints the ratio.

    python bench/bench_quota.py [--orgs 100] [--versions 1000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from storage.migrate import upgrade
from support.services import PostgresServer

BEFORE = "0013"
# The count as 0007 indexed it (storage.repos.versions.created_since before 0014).
COUNT_BEFORE = text(
    "SELECT count(*) FROM model_versions v WHERE v.created_at >= :since "
    "AND (SELECT org_id FROM models WHERE models.id = v.model_uid) = :org"
)
COUNT_AFTER = text(
    "SELECT count(*) FROM model_versions v WHERE v.org_id = :org AND v.created_at >= :since"
)


def seed_and_time(url: str, revision: str, args: argparse.Namespace) -> float:
    """Median milliseconds of one org's count, on a database migrated to `revision`."""
    upgrade(url, revision)
    engine = create_engine(url)
    now = datetime.now(UTC)
    with_org = revision != BEFORE
    columns = "id, model_uid, version, lifecycle_status, description, labels, created_at, "
    columns += "updated_at" + (", org_id" if with_org else "")
    values = ":id, :model, :version, 'draft', '', '{}', :now, :now" + (", :org" if with_org else "")
    orgs: list[str] = []
    with engine.begin() as conn:
        for i in range(args.orgs):
            org, model = str(uuid.uuid4()), str(uuid.uuid4())
            orgs.append(org)
            conn.execute(
                text(
                    "INSERT INTO orgs (id, name, plan, model_versions_monthly, revision, "
                    "created_at) VALUES (:id, :name, 'team', 1000000, 1, :now)"
                ),
                {"id": org, "name": f"org-{i}", "now": now},
            )
            conn.execute(
                text(
                    "INSERT INTO models (id, org_id, model_id, framework, description, tags, "
                    "enabled, revision, created_at, updated_at) "
                    "VALUES (:id, :org, 'm', 'onnx', '', '[]', true, 1, :now, :now)"
                ),
                {"id": model, "org": org, "now": now},
            )
            conn.execute(
                text(f"INSERT INTO model_versions ({columns}) VALUES ({values})"),
                [
                    {
                        "id": str(uuid.uuid4()),
                        "model": model,
                        "version": str(j),
                        "now": now,
                        "org": org,
                    }
                    for j in range(args.versions)
                ],
            )
        conn.execute(text("ANALYZE"))
    since = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    query = COUNT_AFTER if with_org else COUNT_BEFORE
    samples = []
    with engine.connect() as conn:
        for k in range(args.repeat):
            started = time.perf_counter()
            counted = conn.execute(query, {"since": since, "org": orgs[k % len(orgs)]}).scalar()
            samples.append((time.perf_counter() - started) * 1000)
            assert counted == args.versions, counted
    engine.dispose()
    return sorted(samples)[len(samples) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--orgs", type=int, default=100)
    ap.add_argument("--versions", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    pg = PostgresServer().start()
    try:
        before = seed_and_time(pg.new_database(), BEFORE, args)
        after = seed_and_time(pg.new_database(), "head", args)
    finally:
        pg.stop()
    print(
        f"monthly quota count, one org of {args.orgs} with {args.versions} versions each this "
        f"month (PostgreSQL, p50 of {args.repeat}): before 0014 {before:.2f} ms, "
        f"after {after:.2f} ms ({before / after:.0f}x faster)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
