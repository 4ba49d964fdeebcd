"""`modelregistry catalog import` against a fresh server per backend (a clean blessed
catalog): the shipped example, idempotency, presigned URLs of imported files, YAML, and
files with errors rejected whole with nothing written."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import delete

from domain import manifest
from modelregistry.v1 import catalog_pb2
from modelregistry.v1 import catalog_service_pb2 as cpb
from modelregistry.v1 import model_service_pb2 as mpb
from server import manifest_pb, manifest_snapshot
from server.cli import build_parser
from storage.db import create_engine_for, session_factory, transaction
from storage.orm import CatalogVariant, ManifestSnapshot
from storage.repos.catalog import bump_catalog_revision
from support.fixtures import BACKENDS, backend_urls
from support.registry import Client, RunningServer
from support.status import expect_error

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "catalog.json"
DEPRECATED = catalog_pb2.CatalogVersion.STATE_DEPRECATED


@pytest.fixture(scope="module", params=BACKENDS)
def fresh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    db, store = backend_urls(request, request.param, tmp_path_factory.mktemp("import"))
    server = RunningServer(db, store)
    try:
        yield server
    finally:
        server.stop()


def run_import(
    server: RunningServer, path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    # The command's own function, without main()'s process-wide logging setup.
    args = build_parser().parse_args(
        [
            "catalog", "import", str(path),
            "--database-url", server.database_url,
            "--object-store", server.object_store,
        ]
    )  # fmt: skip
    code = int(args.func(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def blessed(c: Client) -> dict[str, catalog_pb2.Variant]:
    resp = c.catalog.ListVariants(
        cpb.ListVariantsRequest(page_size=1000, scope=cpb.VARIANT_SCOPE_BLESSED)
    )
    return {v.model_id: v for v in resp.variants}


def state(c: Client) -> Any:
    """Everything an import could have written, as the API shows it."""
    return c.models.GetManifest(mpb.GetManifestRequest()).models


def test_import_the_example_then_again_changes_nothing(
    fresh: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_import(fresh, EXAMPLE, capsys)
    assert code == 0, err
    c = fresh.new_org()
    variants = blessed(c)
    assert set(variants) == {"mobilenet-v3-small", "whisper-tiny-en"}
    mobilenet = variants["mobilenet-v3-small"]
    assert list(mobilenet.task_taxonomy) == ["image-classification"]
    assert mobilenet.parameter_count == 2542856 and mobilenet.license == "apache-2.0"
    entry = c.models.ResolveModel(mpb.ResolveModelRequest(model_id="mobilenet-v3-small"))
    assert [(v.version_id, v.state) for v in entry.versions][1] == ("1.0.0", DEPRECATED)
    assert entry.latest_version == "1.1.0"
    packages = entry.versions[0].packages
    assert [(p.format, p.quantization, p.runtime) for p in packages] == [
        ("onnx", "none", "onnxruntime"), ("onnx-int8", "int8", "onnxruntime-mobile"),
    ]  # fmt: skip
    files = {r.file_name: r for r in packages[0].resources}
    assert list(files) == ["model.onnx", "preprocess.json", "labels.txt"]
    assert not files["model.onnx"].stored
    local = EXAMPLE.parent / "catalog-files" / "mobilenet-v3-small" / "labels.txt"
    assert files["labels.txt"].stored
    assert files["labels.txt"].sha256 == hashlib.sha256(local.read_bytes()).hexdigest()
    assert files["labels.txt"].size_bytes == local.stat().st_size

    before = c.models.GetManifest(mpb.GetManifestRequest())
    code, out, _ = run_import(fresh, EXAMPLE, capsys)
    assert code == 0
    assert "created nothing; updated nothing; uploaded 0 file(s)" in out
    after = c.models.GetManifest(mpb.GetManifestRequest(if_none_match=before.etag))
    assert after.not_modified


def test_imported_files_download_through_presigned_urls(
    fresh: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_import(fresh, EXAMPLE, capsys)[0] == 0
    c = fresh.new_org()
    entry = c.models.ResolveModel(mpb.ResolveModelRequest(model_id="mobilenet-v3-small"))
    request = cpb.GetCatalogVersionDownloadUrlsRequest(name=entry.versions[0].catalog_version)
    if not fresh.object_store.startswith("s3://"):
        err = expect_error(
            grpc.StatusCode.FAILED_PRECONDITION, c.catalog.GetCatalogVersionDownloadUrls, request
        )
        assert err.reason == "PRESIGN_UNSUPPORTED"
        return
    resp = c.catalog.GetCatalogVersionDownloadUrls(request)
    assert resp.source == "catalog" and resp.skipped_count == 0
    assert [u.resource.file_name for u in resp.resources] == [
        "preprocess.json", "labels.txt", "labels.txt",
    ]  # fmt: skip
    for u in resp.resources:
        with urllib.request.urlopen(u.url, timeout=10) as http:
            body = http.read()
        assert hashlib.sha256(body).hexdigest() == u.resource.sha256
    # a version whose resources have no bytes: an empty list, not an error
    whisper = c.models.ResolveModel(mpb.ResolveModelRequest(model_id="whisper-tiny-en"))
    empty = c.catalog.GetCatalogVersionDownloadUrls(
        cpb.GetCatalogVersionDownloadUrlsRequest(name=whisper.versions[0].catalog_version)
    )
    assert empty.source == "catalog" and list(empty.resources) == []


def test_a_large_file_imports_once_then_changes_nothing(
    fresh: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over a thousand variants (read back in one query per table,
    repo.blessed_rows_named): all are created once, then all are found."""
    count = 1200
    doc = {
        "variants": [
            {
                "model_id": f"bulk-{i:04d}",
                "versions": [
                    {
                        "version_id": "1.0.0",
                        "packages": [
                            {
                                "format": "onnx",
                                "resources": [{"file_name": "model.onnx", "size_bytes": i + 1}],
                            }
                        ],
                    }
                ],
            }
            for i in range(count)
        ]
    }
    path = tmp_path / "bulk.json"
    path.write_text(json.dumps(doc))
    try:
        code, out, err = run_import(fresh, path, capsys)
        assert code == 0, err
        created = f"created {count} packages, {count} resources, {count} variants, {count} versions"
        assert created in out
        code, out, err = run_import(fresh, path, capsys)
        assert code == 0, err
        assert "created nothing; updated nothing" in out
        doc["variants"][-1]["versions"][0]["packages"][0]["resources"][0]["size_bytes"] = 7
        path.write_text(json.dumps(doc))
        code, out, err = run_import(fresh, path, capsys)
        assert code == 0, err
        assert "created nothing; updated 1 resources" in out
    finally:  # the other tests of the module expect the example's small catalog
        engine = create_engine_for(fresh.database_url)
        try:
            with transaction(session_factory(engine)) as session:
                bump_catalog_revision(session)
                session.execute(delete(CatalogVariant).where(CatalogVariant.name.like("bulk-%")))
        finally:
            engine.dispose()


def test_yaml_updates_in_place(
    fresh: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_import(fresh, EXAMPLE, capsys)[0] == 0
    (tmp_path / "more.yaml").write_text(
        """
variants:
  - model_id: whisper-tiny-en
    family: whisper
    task_taxonomy: [automatic-speech-recognition, speech]
    description: updated from YAML
    versions:
      - version_id: 1.0.0
        state: deprecated
      - version_id: 1.1.0
        packages:
          - format: onnx
            resources:
              - {kind: weights, file_name: model.onnx, size_bytes: 10}
  - model_id: yaml-only
"""
    )
    code, out, err = run_import(fresh, tmp_path / "more.yaml", capsys)
    assert code == 0, err
    assert "created 1 packages, 1 resources, 1 variants, 1 versions" in out
    assert "updated 1 variants, 1 versions" in out
    c = fresh.new_org()
    variants = blessed(c)
    whisper = variants["whisper-tiny-en"]
    assert whisper.description == "updated from YAML"
    assert whisper.license == ""  # the file is the truth: a field it leaves out is reset
    assert list(whisper.task_taxonomy) == ["automatic-speech-recognition", "speech"]
    assert "yaml-only" in variants
    entry = c.models.ResolveModel(mpb.ResolveModelRequest(model_id="whisper-tiny-en"))
    assert [(v.version_id, v.state == DEPRECATED) for v in entry.versions] == [
        ("1.1.0", False), ("1.0.0", True),
    ]  # fmt: skip


def test_servers_build_the_blessed_manifest_after_an_import(
    fresh: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An import writes without a server; the server notices the catalog's revision move
    (ManifestBuilds.watch_catalog) and, the anonymous caller's next build being large
    (here: nothing stored), builds and stores it in the background, as after its own
    writes: the first GetManifest after the import finds it built."""
    engine = create_engine_for(fresh.database_url, pool_size=1)
    sessions = session_factory(engine)
    try:
        with transaction(sessions) as session:
            session.execute(delete(ManifestSnapshot).where(ManifestSnapshot.org_id.is_(None)))
        name = f"imported-{uuid.uuid4().hex[:8]}"
        (tmp_path / "one.json").write_text(json.dumps({"variants": [{"model_id": name}]}))
        assert run_import(fresh, tmp_path / "one.json", capsys)[0] == 0
        with transaction(sessions, readonly=True) as session:
            revision = manifest.stamp(session, None)[2]
        deadline = time.monotonic() + 30
        while True:
            with transaction(sessions, readonly=True) as session:
                stored = manifest.load_stored(session, None, manifest_pb.ENTRY_FORMAT)
            if stored is not None and stored.stamp[2] >= revision:
                break
            assert time.monotonic() < deadline, "the blessed manifest was not built"
            time.sleep(0.1)
    finally:
        engine.dispose()
    built = manifest_snapshot.decode(stored.data)
    assert built is not None and name in built.names
    served = fresh.new_org().models.GetManifest(
        mpb.GetManifestRequest(), metadata=[("x-no-auth", "1")]
    )
    assert served.etag == built.etag and name in served.models


BAD_DOCS: list[tuple[str, Any, set[str]]] = [
    ("not-an-object.json", [1, 2], {"$"}),
    ("no-variants.json", {"variant": []}, {"variant", "variants"}),
    (
        "many.json",
        {
            "variants": [
                {"model_id": "ok-one", "versions": [{"version_id": "1", "packages": [
                    {"format": "onnx", "resources": [
                        {"file_name": "labels.txt", "storage_key": "catalog/bad/labels.txt",
                         "file": "catalog-files/mobilenet-v3-small/labels.txt"}]}]}]},
                {"model_id": "Not-OK", "task_taxonomy": ["fine", "Not Fine"],
                 "parameter_count": "many"},
                {"model_id": "ok-one"},
                {"model_id": "ok-two", "versions": [
                    {"version_id": "1", "state": "retired", "packages": [
                        {"format": "onnx", "resources": []},
                        {"format": "zip", "quantization": "int3", "resources": [
                            {"file_name": "../x", "kind": "weights", "sha256": "ABC",
                             "storage_key": "/abs", "size_bytes": -5, "required": "yes"},
                            {"file_name": "y", "file": "missing.bin"}]}]},
                    {"version_id": "1"}]},
            ]
        },
        {
            "variants[1].model_id",
            "variants[1].task_taxonomy[1]",
            "variants[1].parameter_count",
            "variants[2].model_id",
            "variants[3].versions[0].state",
            "variants[3].versions[0].packages[0].resources",
            "variants[3].versions[0].packages[1].format",
            "variants[3].versions[0].packages[1].quantization",
            "variants[3].versions[0].packages[1].resources[0].file_name",
            "variants[3].versions[0].packages[1].resources[0].sha256",
            "variants[3].versions[0].packages[1].resources[0].storage_key",
            "variants[3].versions[0].packages[1].resources[0].size_bytes",
            "variants[3].versions[0].packages[1].resources[0].required",
            "variants[3].versions[0].packages[1].resources[1].storage_key",
            "variants[3].versions[0].packages[1].resources[1].file",
            "variants[3].versions[1].version_id",
        },
    ),
]  # fmt: skip


@pytest.mark.parametrize(("file_name", "doc", "paths"), BAD_DOCS, ids=[d[0] for d in BAD_DOCS])
def test_a_file_with_errors_is_rejected_whole(
    fresh: RunningServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    file_name: str,
    doc: Any,
    paths: set[str],
) -> None:
    c = fresh.new_org()
    before = state(c)
    # the `file` paths in the document are relative to it: put it next to the example's files
    path = tmp_path / file_name
    (tmp_path / "catalog-files").symlink_to(EXAMPLE.parent / "catalog-files")
    path.write_text(json.dumps(doc))
    code, _, err = run_import(fresh, path, capsys)
    assert code == 2
    assert "nothing was imported" in err
    reported = {line.strip().split(": ", 1)[0] for line in err.splitlines() if line[:2] == "  "}
    assert reported == paths
    assert state(c) == before
    assert not fresh.server.runtime.store.exists("catalog/bad/labels.txt")


def test_unparseable_files_name_the_line(
    fresh: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.json").write_text('{"variants": [\n  {"model_id": "x",}\n]}')
    code, _, err = run_import(fresh, tmp_path / "broken.json", capsys)
    assert code == 2 and "line 2" in err
    (tmp_path / "broken.yaml").write_text("variants:\n  - model_id: [unclosed\n")
    code, _, err = run_import(fresh, tmp_path / "broken.yaml", capsys)
    assert code == 2 and "line" in err
