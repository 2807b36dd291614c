#!/usr/bin/env python3
"""Which of a probe's long waits fell while a periodic snapshot was written.

Usage: python3 benches/snapshot_waits.py TRACKER_LOG PROBE_OUTPUT

TRACKER_LOG is a tracker's stderr at log_level = "debug" (its periodic
snapshot lines end with "in <duration> (torrent lists ..."); PROBE_OUTPUT is
what `snapshot_probe probe` printed, stderr included ("probe: waited X ms
from <unix time>", every wait of 5 ms or more). A snapshot's window is from
its line's time minus its duration to its line's time.
"""

import datetime
import re
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    log, probe = sys.argv[1], sys.argv[2]
    windows = []
    for line in open(log):
        m = re.match(r"(\S+)Z DEBUG .*snapshot \(periodic\).* in ([0-9.]+)(ms|s) \(torrent", line)
        if m:
            end = datetime.datetime.fromisoformat(m.group(1)).replace(
                tzinfo=datetime.timezone.utc).timestamp()
            took = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
            windows.append((end - took, end))
    inside, outside = [], []
    for line in open(probe):
        m = re.match(r"probe: waited ([0-9.]+) ms from ([0-9.]+)", line)
        if m:
            ms, at = float(m.group(1)), float(m.group(2))
            during = any(start - 0.001 <= at <= end for start, end in windows)
            (inside if during else outside).append(ms)
    total = sum(end - start for start, end in windows)
    print(f"snapshot windows: {len(windows)}, {total:.2f} s in all; "
          f"waits >= 5 ms inside: {len(inside)} (max {max(inside, default=0):.2f} ms), "
          f"outside: {len(outside)} (max {max(outside, default=0):.2f} ms)")


if __name__ == "__main__":
    main()
