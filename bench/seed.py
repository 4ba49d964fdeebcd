"""The same data set for both registries, written straight into their databases.

Model i (0 <= i < n) is `{family}-{i:06d}` with
- family    = FAMILIES[i % 10]              (name search "resnet" matches 1 in 10)
- framework = FRAMEWORKS[(i // 10) % 5]     (framework "onnx" matches 1 in 5)
- task      = TASKS[(i // 50) % 4]          (tag "vision" matches 1 in 4)
- team      = team-NN, (i // 200) % 25
so the filtered list (search + tag + framework) matches n / 200 models (500 of 100,000).
One model in ten ((i // 7) % 10 == 0) has two versions, 1.0.0 and 1.1.0.

This service: org `bench` (enterprise plan) and its models and versions are inserted with
SQLAlchemy Core through the storage layer's ORM tables (`storage.orm.Model`,
`ModelVersion`), 5,000 rows a statement, after `storage.migrate.upgrade`.
In this service a tag is a list element (`vision`, `team-07`); the framework is a column.

MLflow: its server creates its schema on start; then its `registered_models`,
`registered_model_tags` and `model_versions` tables are filled with PostgreSQL COPY. MLflow
has no framework field or tag lists, so the same facts are MLflow tags: `framework=onnx`,
`task=vision`, `team=team-07`. The MLflow REST API reads them back before any scenario
runs (a search and a get are checked against the expected counts).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

FAMILIES = (
    "mobilenet", "resnet", "efficientnet", "bert", "whisper",
    "yolo", "vit", "llama", "distilgpt", "clip",
)  # fmt: skip
FRAMEWORKS = ("onnx", "pytorch", "tflite", "coreml", "tensorflow")
TASKS = ("vision", "nlp", "audio", "tabular")
VERSIONS = ("1.0.0", "1.1.0")
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)

# The filtered list both registries answer: the three filters of the scenario.
LIST_SEARCH = "resnet"
LIST_TAG = "vision"
LIST_FRAMEWORK = "onnx"
ORG = "bench"
PROBE = 0  # a model with versions, read back from both registries after seeding


@dataclass(frozen=True)
class Spec:
    i: int
    model_id: str
    family: str
    framework: str
    task: str
    team: str
    description: str
    created: datetime
    versions: tuple[str, ...]


def spec(i: int) -> Spec:
    family = FAMILIES[i % 10]
    task = TASKS[(i // 50) % 4]
    return Spec(
        i=i,
        model_id=f"{family}-{i:06d}",
        family=family,
        framework=FRAMEWORKS[(i // 10) % 5],
        task=task,
        team=f"team-{(i // 200) % 25:02d}",
        description=f"{family} for {task}, benchmark model {i}",
        created=BASE_TIME + timedelta(seconds=60 * i),
        versions=VERSIONS if (i // 7) % 10 == 0 else (),
    )


def specs(n: int) -> Iterator[Spec]:
    for i in range(n):
        yield spec(i)


def expected_list_matches(n: int) -> int:
    return sum(
        1
        for i in range(n)
        if FAMILIES[i % 10] == LIST_SEARCH
        and FRAMEWORKS[(i // 10) % 5] == LIST_FRAMEWORK
        and TASKS[(i // 50) % 4] == LIST_TAG
    )


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _batches(it: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for x in it:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------
# this service


def seed_ours(database_url: str, n: int) -> tuple[str, float]:
    """Migrate, create org `bench` with a key, insert n models; (api key, seconds)."""
    from sqlalchemy import insert

    from domain import keys
    from storage.db import create_engine_for, session_factory, transaction
    from storage.migrate import upgrade
    from storage.orm import Model, ModelVersion

    upgrade(database_url)
    engine = create_engine_for(database_url, pool_size=1)
    sessions = session_factory(engine)
    start = time.monotonic()
    try:
        with transaction(sessions) as session:
            org = keys.create_org(session, ORG, "enterprise")
            # The create-version scenario alone writes thousands of versions in a minute;
            # lift this org's monthly quota so the benchmark measures writes, not the quota.
            org.model_versions_monthly = 1_000_000_000
            session.flush()
            org_id = org.id
            token = keys.create_key(session, ORG).token
        for batch in _batches(specs(n), 5000):
            model_rows, version_rows = [], []
            for s in batch:
                uid = str(uuid.uuid4())
                model_rows.append(
                    {
                        "id": uid,
                        "org_id": org_id,
                        "model_id": s.model_id,
                        "framework": s.framework,
                        "description": s.description,
                        "tags": [s.task, s.team],
                        "enabled": True,
                        "revision": 1 + len(s.versions),
                        "created_at": s.created,
                        "updated_at": s.created,
                    }
                )
                for k, v in enumerate(s.versions):
                    t = s.created + timedelta(minutes=k + 1)
                    version_rows.append(
                        {
                            "id": str(uuid.uuid4()),
                            "org_id": org_id,
                            "model_uid": uid,
                            "version": v,
                            "lifecycle_status": "draft",
                            "description": "",
                            "labels": {},
                            "created_at": t,
                            "updated_at": t,
                        }
                    )
            with transaction(sessions) as session:
                session.execute(insert(Model.__table__), model_rows)
                if version_rows:
                    session.execute(insert(ModelVersion.__table__), version_rows)
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    finally:
        engine.dispose()
    return token, time.monotonic() - start


# ---------------------------------------------------------------------------------------
# MLflow


def _required_columns(conn: Any, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
        "AND is_nullable = 'NO' AND column_default IS NULL",
        (table,),
    ).fetchall()
    return {r[0] for r in rows}


def _columns(conn: Any, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
    ).fetchall()
    return {r[0] for r in rows}


def _copy(conn: Any, table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
    have = _columns(conn, table)
    missing = _required_columns(conn, table) - set(columns)
    unknown = set(columns) - have
    if missing or unknown:
        raise RuntimeError(
            f"MLflow's {table} table changed: required columns we do not fill {sorted(missing)}"
            f", columns we fill that it lacks {sorted(unknown)}"
        )
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)


def seed_mlflow(conninfo: str, n: int) -> float:
    """COPY n registered models, their tags and versions into MLflow's tables."""
    import psycopg

    start = time.monotonic()
    with psycopg.connect(conninfo) as conn:
        extra_rm: dict[str, Any] = {}
        if "workspace" in _columns(conn, "registered_models"):
            extra_rm["workspace"] = "default"
        rm_cols = ["name", "creation_time", "last_updated_time", "description", *extra_rm]
        _copy(
            conn,
            "registered_models",
            rm_cols,
            (
                (s.model_id, _ms(s.created), _ms(s.created), s.description, *extra_rm.values())
                for s in specs(n)
            ),
        )
        tag_cols = ["key", "value", "name", *extra_rm]
        _copy(
            conn,
            "registered_model_tags",
            tag_cols,
            (
                (key, value, s.model_id, *extra_rm.values())
                for s in specs(n)
                for key, value in (
                    ("framework", s.framework),
                    ("task", s.task),
                    ("team", s.team),
                )
            ),
        )
        mv_cols = [
            "name", "version", "creation_time", "last_updated_time", "description",
            "user_id", "current_stage", "source", "run_id", "status", "status_message",
            "run_link", "storage_location", *extra_rm,
        ]  # fmt: skip

        def versions() -> Iterator[tuple[Any, ...]]:
            for s in specs(n):
                for k, _v in enumerate(s.versions):
                    t = _ms(s.created + timedelta(minutes=k + 1))
                    src = f"s3://mlflow-artifacts/seed/{s.model_id}/{k + 1}"
                    yield (
                        s.model_id, k + 1, t, t, "", None, "None", src, None, "READY", None,
                        None, src, *extra_rm.values(),
                    )  # fmt: skip

        _copy(conn, "model_versions", mv_cols, versions())
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")
    return time.monotonic() - start


def mlflow_filter() -> str:
    return (
        f"name ILIKE '%{LIST_SEARCH}%' AND tags.task = '{LIST_TAG}' "
        f"AND tags.framework = '{LIST_FRAMEWORK}'"
    )


def mlflow_get(base: str, path: str, params: dict[str, Any]) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=60) as resp:
        return json.load(resp)


def check_mlflow(base: str, n: int) -> None:
    """The seeded data reads back through MLflow's REST API as expected."""
    probe = spec(PROBE)
    got = mlflow_get(base, "/api/2.0/mlflow/registered-models/get", {"name": probe.model_id})
    rm = got["registered_model"]
    tags = {t["key"]: t["value"] for t in rm.get("tags", [])}
    if tags.get("framework") != probe.framework or not rm.get("latest_versions"):
        raise RuntimeError(f"MLflow does not read the seeded model back as expected: {got}")
    want = min(expected_list_matches(n), 50)
    page = mlflow_get(
        base,
        "/api/2.0/mlflow/registered-models/search",
        {"filter": mlflow_filter(), "max_results": 50},
    )
    if len(page.get("registered_models", [])) != want:
        raise RuntimeError(
            f"MLflow's filtered search found {len(page.get('registered_models', []))} "
            f"models, expected {want}"
        )


def check_ours(address: str, token: str, n: int) -> None:
    import grpc

    from modelregistry.v1 import model_service_pb2 as pb
    from modelregistry.v1 import model_service_pb2_grpc

    md = [("authorization", f"Bearer {token}")]
    with grpc.insecure_channel(address) as ch:
        stub = model_service_pb2_grpc.ModelServiceStub(ch)
        probe = spec(PROBE)
        m = stub.GetModel(pb.GetModelRequest(name=f"models/{probe.model_id}"), metadata=md)
        if m.framework != probe.framework or m.version_count != len(probe.versions):
            raise RuntimeError(f"modelregistry does not read the seeded model back: {m}")
        page = stub.ListModels(
            pb.ListModelsRequest(
                page_size=50, search=LIST_SEARCH, tag=LIST_TAG, framework=LIST_FRAMEWORK
            ),
            metadata=md,
        )
        if page.total_size != expected_list_matches(n):
            raise RuntimeError(
                f"modelregistry's filtered list counts {page.total_size}, "
                f"expected {expected_list_matches(n)}"
            )
