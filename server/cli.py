"""The `modelregistry` command: serve, migrate, and administration of orgs and keys."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from domain.errors import DomainError, InvalidArgument
from domain.plans import DEFAULT_PLAN, PLANS
from server import logs
from server.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_LISTEN,
    DEFAULT_OBJECT_STORE,
    Settings,
    env,
    normalize_sqlite_url,
)

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from domain import device_profiles

# Imported where used (storage.db, storage.migrate, domain.keys, domain.device_profiles,
# alembic, the ORM): `modelregistry push`/`pull` on a device start in a fraction of the time.

T = TypeVar("T")
DEV_ORG = "dev"
DEV_KEY_FILE = Path("var/dev-api-key")


def _database_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        default=env("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host:port/db "
        "(env MODELREGISTRY_DATABASE_URL; default %(default)s)",
    )


def _in_transaction(database_url: str, fn: Callable[[Session], T]) -> T:
    from storage.db import create_engine_for, session_factory, transaction

    engine = create_engine_for(normalize_sqlite_url(database_url), pool_size=1)
    try:
        with transaction(session_factory(engine)) as session:
            return fn(session)
    finally:
        engine.dispose()


def cmd_serve(args: argparse.Namespace) -> int:
    if args.metrics_listen:
        from server.metrics import split_host_port

        try:
            split_host_port(args.metrics_listen)
        except ValueError as exc:
            print(f"modelregistry: --metrics-listen: {exc}", file=sys.stderr)
            return 2
    settings = dataclasses.replace(
        Settings.from_env(),
        listen=args.listen,
        database_url=args.database_url,
        object_store=args.object_store,
        metrics_listen=args.metrics_listen,
        conversion_workers=args.conversion_workers,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        insecure=args.insecure,
    )
    from server import tls

    try:
        tls.check(settings)
    except tls.TransportError as exc:
        print(f"modelregistry: {exc}", file=sys.stderr)
        return 2
    if args.migrate:
        from storage.migrate import upgrade

        upgrade(normalize_sqlite_url(settings.database_url))
    from server.app import serve

    asyncio.run(serve(settings))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Conversion workers on their own (scale-out); limits from MODELREGISTRY_CONVERSION_*."""
    settings = dataclasses.replace(
        Settings.from_env(), database_url=args.database_url, object_store=args.object_store
    )
    if args.migrate:
        from storage.migrate import upgrade

        upgrade(normalize_sqlite_url(settings.database_url))
    from server.conversion_service import run_workers

    run_workers(settings, args.workers)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from storage.migrate import upgrade

    upgrade(normalize_sqlite_url(args.database_url))
    print("database is at the latest schema")
    return 0


def cmd_orgs_create(args: argparse.Namespace) -> int:
    from domain import keys

    org = _in_transaction(args.database_url, lambda s: keys.create_org(s, args.name, args.plan))
    print(f"created org {org.name} (plan {org.plan}, {org.model_versions_monthly} versions/month)")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    from domain import keys

    issued = _in_transaction(
        args.database_url,
        lambda s: keys.create_key(s, args.org, admin=args.admin, label=args.label),
    )
    kind = "admin key" if issued.admin else "key"
    print(
        f"created {kind} {issued.key_id} for org {issued.org_name}; it is shown only once:",
        file=sys.stderr,
    )
    print(issued.token)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from domain import keys

    _in_transaction(args.database_url, lambda s: keys.revoke_key(s, args.key_id))
    print(f"revoked key {args.key_id}")
    return 0


def cmd_catalog_import(args: argparse.Namespace) -> int:
    """Validate the whole file, store its files' bytes, upsert it in one transaction."""
    from domain.catalog_import import import_file
    from domain.errors import InvalidArgument
    from storage.objectstore import open_store

    try:
        report = import_file(
            Path(args.file),
            lambda fn: _in_transaction(args.database_url, fn),
            (lambda: open_store(args.object_store)) if args.object_store else None,
        )
    except InvalidArgument as exc:
        print(f"modelregistry: {args.file}: rejected, nothing was imported:", file=sys.stderr)
        for v in exc.violations:
            print(f"  {v.field}: {v.description}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"imported {args.file}: {report.summary()}")
    return 0


def _read_profiles_file(path: str) -> list[Any]:
    """One profile object, a list of them, or {"profiles": [...]}; `-` reads stdin."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text("utf-8")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InvalidArgument.field("file", f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and "profiles" in data:
        data = data["profiles"]
    return data if isinstance(data, list) else [data]


def cmd_profiles_list(args: argparse.Namespace) -> int:
    from domain import device_profiles, keys

    def load(session: Session) -> list[device_profiles.DeviceProfile]:
        org_id = keys.get_org(session, args.org).id if args.org else None
        return device_profiles.profiles_for_org(session, org_id)

    profiles = _in_transaction(args.database_url, load)
    if args.json:
        doc = {
            "data_version": device_profiles.data_version(),
            "profiles": [p.to_json() for p in profiles],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"device profiles data version {device_profiles.data_version()}")
    for p in profiles:
        print(
            f"{p.name:24} ram {p.ram_bytes / 2**30:5.1f} GiB  weights budget "
            f"{p.weights_budget_bytes / 2**30:5.2f} GiB  compute x{p.compute_factor:<5g} "
            f"formats {','.join(p.formats)}  [{p.origin}]"
        )
    return 0


def cmd_profiles_set(args: argparse.Namespace) -> int:
    from domain import device_profiles, keys

    docs = _read_profiles_file(args.file)
    stored = _in_transaction(
        args.database_url,
        lambda s: device_profiles.set_overrides(s, keys.get_org(s, args.org).id, docs),
    )
    for p in stored:
        print(f"set device profile {p.name} for org {args.org} ({p.origin})")
    return 0


def cmd_profiles_delete(args: argparse.Namespace) -> int:
    from domain import device_profiles, keys

    _in_transaction(
        args.database_url,
        lambda s: device_profiles.delete_override(s, keys.get_org(s, args.org).id, args.name),
    )
    print(f"deleted the device profile override {args.name} of org {args.org}")
    return 0


def cmd_dev_key(args: argparse.Namespace) -> int:
    """Make sure a dev org and key exist for `make run`; print the key."""
    from domain import keys

    if DEV_KEY_FILE.exists():
        print(DEV_KEY_FILE.read_text().strip())
        return 0

    def ensure(session: Session) -> str:
        try:
            keys.get_org(session, DEV_ORG)
        except DomainError:
            keys.create_org(session, DEV_ORG, "team")
        return keys.create_key(session, DEV_ORG, label="make run").token

    token = _in_transaction(args.database_url, ensure)
    DEV_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    DEV_KEY_FILE.write_text(token + "\n")
    os.chmod(DEV_KEY_FILE, 0o600)
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelregistry", description="A model registry for on-device ML, served over gRPC."
    )
    parser.add_argument("--log-level", default=env("LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument(
        "--listen",
        default=env("LISTEN", DEFAULT_LISTEN),
        help="host:port to listen on (env MODELREGISTRY_LISTEN; default %(default)s)",
    )
    _database_arg(serve)
    serve.add_argument(
        "--object-store",
        default=env("OBJECT_STORE", DEFAULT_OBJECT_STORE),
        help="a directory, file:///abs/path, or s3://ACCESS:SECRET@host:port/bucket?secure=false "
        "(env MODELREGISTRY_OBJECT_STORE; default %(default)s)",
    )
    serve.add_argument(
        "--metrics-listen",
        default=env("METRICS_LISTEN", ""),
        help="host:port for Prometheus /metrics (env MODELREGISTRY_METRICS_LISTEN; off if empty)",
    )
    serve.add_argument(
        "--tls-cert",
        default=env("TLS_CERT", ""),
        help="PEM certificate chain for TLS on --listen (env MODELREGISTRY_TLS_CERT)",
    )
    serve.add_argument(
        "--tls-key",
        default=env("TLS_KEY", ""),
        help="PEM private key of --tls-cert (env MODELREGISTRY_TLS_KEY)",
    )
    serve.add_argument(
        "--tls-client-ca",
        default=env("TLS_CLIENT_CA", ""),
        help="PEM CA bundle: require client certificates signed by it, i.e. mutual TLS "
        "(env MODELREGISTRY_TLS_CLIENT_CA)",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=env("INSECURE", "") not in ("", "0", "false"),
        help="allow plaintext on a non-loopback --listen address (env MODELREGISTRY_INSECURE=1); "
        "without TLS the server otherwise serves only on loopback",
    )
    serve.add_argument(
        "--migrate", action="store_true", help="apply database migrations before serving"
    )
    serve.add_argument(
        "--conversion-workers",
        type=int,
        default=int(env("CONVERSION_WORKERS", "1")),
        help="conversion workers run by this server, 0 for none (then run `modelregistry "
        "worker`) (env MODELREGISTRY_CONVERSION_WORKERS; default %(default)s)",
    )
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser(
        "worker",
        help="run conversion workers without a gRPC server (they share the database and "
        "object store with the servers)",
    )
    _database_arg(worker)
    worker.add_argument(
        "--object-store",
        default=env("OBJECT_STORE", DEFAULT_OBJECT_STORE),
        help="the servers' object store (env MODELREGISTRY_OBJECT_STORE; default %(default)s)",
    )
    worker.add_argument(
        "--workers",
        type=int,
        default=int(env("CONVERSION_WORKERS", "1")),
        help="concurrent conversions (env MODELREGISTRY_CONVERSION_WORKERS; default %(default)s)",
    )
    worker.add_argument(
        "--migrate", action="store_true", help="apply database migrations before starting"
    )
    worker.set_defaults(func=cmd_worker)

    migrate = sub.add_parser("migrate", help="apply database migrations")
    _database_arg(migrate)
    migrate.set_defaults(func=cmd_migrate)

    orgs = sub.add_parser("orgs", help="manage orgs").add_subparsers(dest="orgs_cmd", required=True)
    org_create = orgs.add_parser("create", help="create an org")
    org_create.add_argument("name")
    org_create.add_argument("--plan", default=DEFAULT_PLAN, choices=sorted(PLANS))
    _database_arg(org_create)
    org_create.set_defaults(func=cmd_orgs_create)

    key_cmds = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_cmd", required=True
    )
    key_create = key_cmds.add_parser("create", help="create an API key (printed once)")
    key_create.add_argument("--org", required=True)
    key_create.add_argument("--admin", action="store_true", help="may write blessed catalog rows")
    key_create.add_argument("--label", default="")
    _database_arg(key_create)
    key_create.set_defaults(func=cmd_keys_create)
    key_revoke = key_cmds.add_parser("revoke", help="revoke an API key by its key id")
    key_revoke.add_argument("key_id")
    _database_arg(key_revoke)
    key_revoke.set_defaults(func=cmd_keys_revoke)

    catalog_cmds = sub.add_parser("catalog", help="manage the blessed catalog").add_subparsers(
        dest="catalog_cmd", required=True
    )
    catalog_import = catalog_cmds.add_parser(
        "import",
        help="load blessed variants/versions/packages/resources from a JSON or YAML file "
        "(idempotent; a file with errors is rejected whole)",
    )
    catalog_import.add_argument("file", help="the catalog file (.json, else YAML)")
    _database_arg(catalog_import)
    catalog_import.add_argument(
        "--object-store",
        default=env("OBJECT_STORE", DEFAULT_OBJECT_STORE),
        help="where resources with a local `file` are stored (env MODELREGISTRY_OBJECT_STORE; "
        "default %(default)s)",
    )
    catalog_import.set_defaults(func=cmd_catalog_import)

    profile_cmds = sub.add_parser(
        "profiles", help="device profiles: the shipped ones and an org's overrides"
    ).add_subparsers(dest="profiles_cmd", required=True)
    profiles_list = profile_cmds.add_parser(
        "list", help="list the device profiles (with an org's overrides applied)"
    )
    profiles_list.add_argument("--org", default="", help="apply this org's overrides")
    profiles_list.add_argument("--json", action="store_true", help="full profiles as JSON")
    _database_arg(profiles_list)
    profiles_list.set_defaults(func=cmd_profiles_list)
    profiles_set = profile_cmds.add_parser(
        "set",
        help="store an org's profile overrides from a JSON file: a shipped name changes "
        "only the fields given, a new name adds a profile (all fields required)",
    )
    profiles_set.add_argument("--org", required=True)
    profiles_set.add_argument("file", help="JSON: a profile, a list, or {'profiles': [...]}")
    _database_arg(profiles_set)
    profiles_set.set_defaults(func=cmd_profiles_set)
    profiles_delete = profile_cmds.add_parser(
        "delete", help="remove an org's override (a shipped profile reverts to the file)"
    )
    profiles_delete.add_argument("--org", required=True)
    profiles_delete.add_argument("name")
    _database_arg(profiles_delete)
    profiles_delete.set_defaults(func=cmd_profiles_delete)

    dev = sub.add_parser("dev-key", help="ensure a dev org and key exist and print the key")
    _database_arg(dev)
    dev.set_defaults(func=cmd_dev_key)

    from server import telemetry_cli

    telemetry_cli.add_parser(sub, _database_arg)

    from server import gc_cli

    gc_cli.add_parser(sub, _database_arg)

    from client import cli as client_cli

    client_cli.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["push"], ["pull"]):
        # The agent commands skip the server-side parsers (and their imports).
        from client import cli as client_cli

        return client_cli.main(argv)
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    try:
        return int(args.func(args))
    except DomainError as exc:
        print(f"modelregistry: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
