"""``python -m bench [--quick] [--only NAME ...] [--no-profile] [--no-docs]``."""

from __future__ import annotations

import argparse
import sys
import time

from bench.procs import install_signal_handlers
from bench.run import Bench, Plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the short run (under 2 minutes)")
    parser.add_argument("--only", nargs="*", default=(), metavar="NAME",
                        help="only these configurations: mem sqlite sqlite-split sqlite-nogate postgresql redis mixed django")
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process profile")
    parser.add_argument("--no-docs", action="store_true", help="write the JSON but leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    install_signal_handlers()
    started = time.monotonic()
    from bench.report import head, write_results

    commit = head()  # the code measured: a commit made during the run does not change it
    plan = Plan.make(args.quick, tuple(args.only))
    bench = Bench(plan)
    try:
        outcome = bench.run()
        if not args.no_profile:
            from bench.profile import profile_all

            outcome.profiles = profile_all(bench, quick=args.quick, commit=commit)
    except KeyboardInterrupt:
        print("\ninterrupted: every server is being stopped", file=sys.stderr)
        return 130
    finally:
        bench.close()
    elapsed = time.monotonic() - started
    json_path, docs_path = write_results(outcome, elapsed, docs=not args.no_docs, commit=commit)
    print(f"\nresults: {json_path}" + (f"\ntable:   {docs_path}" if docs_path else ""))
    print(f"took {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
