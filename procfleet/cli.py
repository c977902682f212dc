"""The ``procfleet`` command. Thin by design: it parses arguments, sets up logging and hands
over to one module per subcommand (``procfleet/commands/<name>.py``). Those modules import
their package only inside ``run`` so that ``procfleet agent`` never loads the server stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from procfleet.logs import LOG_FORMATS, setup_logging

# subcommand -> (module under procfleet.commands, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("up", "run the whole stack on this machine"),
    "agent": ("agent", "run the host agent"),
    "gateway": ("gateway", "run the ingest + query HTTP service"),
    "worker": ("worker", "run digest workers"),
    "migrate": ("migrate", "apply pending database migrations"),
    "compact": ("compact", "compact closed hours of process history and apply the retention "
                           "of every tier, once, then exit"),
    "token": ("token", "create, list and revoke API tokens"),
    "host": ("host", "list enrolled hosts, reset a host's enrollment"),
    "parse": ("parse", "parse a saved ps / tasklist output into JSON"),
    "top": ("top", "show the top processes from the API"),
    "ps": ("ps", "find processes by name or command line across the fleet"),
    "mcp": ("mcp", "serve the MCP tools over stdio for LLM clients"),
    "export": ("export", "export samples or rollups to Parquet / CSV files"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="procfleet",
        description="Which processes use the CPU and memory across a fleet of machines.",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=None,
        help="log line format (default: $PROCFLEET_LOG_FORMAT or logfmt)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(f"procfleet.commands.{module_name}")
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
