"""`barter-hands`: run a Hands worker against Brain."""

import argparse
import asyncio
import signal
import sys

from hands_service import logs
from hands_service.brain_client import check_connection_settings
from hands_service.config import (
    ConfigError,
    HandsConfig,
    HandsError,
    add_arguments,
    load_config,
)
from hands_service.dry_run import DryRunExecutor, DryRunRules
from hands_service.executor import Executor
from hands_service.worker import Worker

# Exit code for a configuration the worker cannot start with.
EXIT_CONFIG = 2


def build_executor(config: HandsConfig) -> Executor:
    """The executor HANDS_EXECUTOR names; instagram is imported only when chosen."""
    if config.executor == "instagram":
        try:
            from hands_service.instagram import InstagramExecutor
        except ImportError as exc:
            raise ConfigError(
                "HANDS_EXECUTOR=instagram but hands_service.instagram cannot be"
                f" imported ({exc}); install the 'hands' extra or use dry-run"
            ) from exc
        return InstagramExecutor()
    rules = (
        DryRunRules.from_file(config.dry_run_rules) if config.dry_run_rules else None
    )
    return DryRunExecutor(
        delay_s=config.dry_run_delay_s, rules=rules, ledger_path=config.dry_run_ledger
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each `run` option names its variable and default."""
    parser = argparse.ArgumentParser(
        prog="barter-hands",
        description="Hands: claim jobs from Brain and perform their steps.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="claim and run jobs until SIGTERM or SIGINT",
        description=(
            "Claim and run jobs until stopped. SIGTERM or SIGINT drains (stop"
            " claiming, finish running jobs, exit 0); a second signal, or the"
            " drain timeout, hands running jobs back to Brain. Options override"
            " the environment."
        ),
    )
    add_arguments(run)
    return parser


async def _serve(worker: Worker) -> int:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.shutdown)
    try:
        return await worker.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `barter-hands` console script."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(flags=args)
        logs.configure(config.log_format, config.log_level)
        # Settings that only the channel reads are checked before any work.
        check_connection_settings(config)
        executor = build_executor(config)
    except HandsError as exc:
        print(f"barter-hands: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return asyncio.run(_serve(Worker(config, executor)))


if __name__ == "__main__":
    sys.exit(main())
