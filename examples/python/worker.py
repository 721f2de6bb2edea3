#!/usr/bin/env python3
"""A pg_conveyor worker in Python: claims runs of QUEUES and runs the handlers of handlers.py.

    worker.py QUEUES [--drain] [--batch N]

Connects with the usual PG* variables. See conveyor_worker.py for what it does.
"""

import argparse
import sys

from conveyor_worker import Worker
from handlers import HANDLERS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queues", help="queue name(s), comma-separated")
    parser.add_argument("--drain", action="store_true", help="exit when the queues have nothing left to do")
    parser.add_argument("--batch", type=int, help="runs per claim (default CONVEYOR_BATCH or 10)")
    args = parser.parse_args()
    worker = Worker(args.queues, HANDLERS, drain=args.drain)
    if args.batch:
        worker.batch = args.batch
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
