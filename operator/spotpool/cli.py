"""The `spotpool` command: one entry point, one sub-command per role.

Each sub-command owns its flags in its own module, so the operator, the simulator and the demo can
be run and tested independently; this module only dispatches.
"""

from __future__ import annotations

import importlib
import sys

from spotpool import __version__

COMMANDS = {
    "operator": ("spotpool.controller.cli", "run the operator (reconciles SpotComputeEnvironment objects)"),
    "simulator": ("spotpool.simulator.cli", "run the CVM simulator (the signed CVM API with a market model)"),
    "demo": ("spotpool.demo", "bring up a control plane, the simulator and the operator, and show a pool converge"),
}

USAGE = "usage: spotpool {" + ",".join(COMMANDS) + "} [options]\n\n" + "\n".join(
    f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()
) + "\n\nRun `spotpool COMMAND --help` for a command's options.\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"spotpool {__version__}")
        return 0
    if args[0] not in COMMANDS:
        sys.stderr.write(f"spotpool: unknown command {args[0]!r}\n\n{USAGE}")
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    return int(module.cli(args[1:]) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
