"""`barter-brain`: serve the Brain, migrate its database, make a key."""

import argparse
import asyncio
import sys

import structlog

from brain_service import logs
from brain_service.config import BrainConfig
from brain_service.errors import BrainError
from brain_service.settings import SettingError, add_arguments, load

CONFIG_FILE_ENV = "BRAIN_CONFIG"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="barter-brain",
        description="barter's Brain: stores jobs and accounts and leases jobs out.",
        epilog=f"Settings may also come from a TOML file named by {CONFIG_FILE_ENV}.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve gRPC until SIGTERM",
        description="Serve gRPC until SIGTERM.",
    )
    add_arguments(serve, BrainConfig)
    serve.add_argument(
        "--port-file", default="", help="write the bound port to this file once serving"
    )
    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade the database schema",
        description="Create or upgrade the database schema to the newest revision.",
    )
    add_arguments(migrate, BrainConfig)
    commands.add_parser(
        "keygen",
        help="print a new key for BRAIN_SECRET_KEY_FILE",
        description="Print a new Fernet key that encrypts passwords and sessions.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        from brain_service.vault import new_key

        print(new_key())
        return 0

    try:
        config = load(BrainConfig, flags=args, file_env=CONFIG_FILE_ENV)
        config.tier_table()
        logs.configure(config.log_format, config.log_level)
    except (SettingError, ValueError) as exc:
        print(f"barter-brain: {exc}", file=sys.stderr)
        return 2
    log = structlog.get_logger("brain")

    try:
        if args.command == "migrate":
            from brain_service.schema import migrate
            from brain_service.store import make_engine

            engine = make_engine(config.database_url)
            revision = migrate(engine)
            engine.dispose()
            log.info("schema_migrated", revision=revision)
            return 0

        from brain_service.server import serve

        asyncio.run(serve(config, port_file=args.port_file))
        return 0
    except SettingError as exc:
        log.error("brain_misconfigured", reason=str(exc))
        return 2
    except BrainError as exc:
        log.error("brain_failed", reason=str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
