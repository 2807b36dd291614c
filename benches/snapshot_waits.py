#!/usr/bin/env python3
"""The probe's long waits set beside what the executor was doing: periodic
snapshots and cleaning passes, from the tracker's debug log.

Two uses:

  python3 benches/snapshot_waits.py TRACKER_LOG PROBE_OUTPUT
      sorts the waits of one run already made.

  python3 benches/snapshot_waits.py --ab A_BINARY B_BINARY [--rounds 2]
          [--duration 20] [--interval 5] [--cleaning 4] [--torrents 100000]
          [--peers-per-torrent 10] [--realtime]
      runs each binary in turn, A B then B A (every round reported): one
      worker on core 0 with a state directory, log_level = "debug",
      snapshot.interval_secs = INTERVAL and tracker.cleaning_interval_secs =
      CLEANING, so that snapshots and cleaning passes both fall inside the
      probe's window; snapshot_probe fills it with TORRENTS x
      PEERS_PER_TORRENT distinct peers, then probes for DURATION seconds
      (one announce a millisecond, on core 1). Per run: the probe's largest
      delay and percentiles, the waits of 5 ms or more inside snapshot
      windows, inside cleaning windows and outside both, the longest
      executor step of each kind from the log lines, and the load average.

TRACKER_LOG is a tracker's stderr at log_level = "debug": its periodic
snapshot lines end with "in <duration> (torrent lists ...", its cleaning
lines say "cleaning pass in <duration> (...". PROBE_OUTPUT is what
`snapshot_probe probe` printed, stderr included ("probe: waited X ms from
<unix time>": every wait of 5 ms or more). A window runs from its line's
time minus its duration to its line's time (plus 1 ms either side).

Needs `cargo build --release -p aquatic --bins --examples` (the probe is
target/release/examples/snapshot_probe).
"""

import argparse
import datetime
import os
import re
import shlex
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import snapshot  # noqa: E402  (ports, start, stop, realtime)

SLACK = 0.001


def secs(number, unit):
    return float(number) * {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def timestamp(text):
    return datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.timezone.utc).timestamp()


DURATION = r"([0-9.]+)(ns|µs|us|ms|s)"


def windows(log):
    """(snapshot windows, cleaning windows, longest steps in ms)."""
    snaps, cleans = [], []
    steps = {"slice": 0.0, "lists": 0.0, "clean": 0.0, "clean_slice": 0.0, "shrink": 0.0, "trim": 0.0}
    for line in open(log, errors="replace"):
        m = re.match(r"(\S+)Z DEBUG .*snapshot \(periodic\).* in " + DURATION + r" \(torrent lists " + DURATION +
                     r", .* longest " + DURATION + r"\)", line)
        if m:
            end = timestamp(m.group(1))
            snaps.append((end - secs(m.group(2), m.group(3)), end))
            steps["lists"] = max(steps["lists"], secs(m.group(4), m.group(5)) * 1e3)
            steps["slice"] = max(steps["slice"], secs(m.group(6), m.group(7)) * 1e3)
            continue
        m = re.match(r"(\S+)Z DEBUG .*cleaning pass in " + DURATION + r" \((.*?)\)", line)
        if m:
            end = timestamp(m.group(1))
            cleans.append((end - secs(m.group(2), m.group(3)), end))
            for name, number, unit in re.findall(r"(\w+) " + DURATION, m.group(4)):
                key = {"longest": "clean_slice"}.get(name, name)
                if key in steps:
                    steps[key] = max(steps[key], secs(number, unit) * 1e3)
    return snaps, cleans, steps


def sort_waits(log, probe_text):
    snaps, cleans, steps = windows(log)
    inside = {"snapshot": [], "cleaning": [], "neither": []}
    for m in re.finditer(r"probe: waited ([0-9.]+) ms from ([0-9.]+)", probe_text):
        ms, at = float(m.group(1)), float(m.group(2))
        if any(s - SLACK <= at <= e + SLACK for s, e in snaps):
            inside["snapshot"].append(ms)
        elif any(s - SLACK <= at <= e + SLACK for s, e in cleans):
            inside["cleaning"].append(ms)
        else:
            inside["neither"].append(ms)
    covered = {"snapshot": sum(e - s for s, e in snaps), "cleaning": sum(e - s for s, e in cleans)}
    return inside, covered, (len(snaps), len(cleans)), steps


def describe(inside):
    return ", ".join(f"{k} {len(v)} (max {max(v, default=0):.1f})" for k, v in inside.items())


def config(udp_port, metrics_port, state, interval, cleaning):
    text = snapshot.config(udp_port, metrics_port, state, interval)
    text = text.replace('log_level = "info"', 'log_level = "debug"')
    return text.replace("[tracker]\n", f"[tracker]\ncleaning_interval_secs = {cleaning}\n")


def run_one(args, binary, work, run):
    state = os.path.join(work, f"state-{run}")
    log_path = os.path.join(work, f"{run}.log")
    udp_port = snapshot.free_port(snapshot.socket.SOCK_DGRAM)
    metrics_port = snapshot.free_port()
    config_path = os.path.join(work, f"{run}.toml")
    with open(config_path, "w") as f:
        f.write(config(udp_port, metrics_port, state, args.interval, args.cleaning))
    address = f"127.0.0.1:{udp_port}"
    tracker, _ = snapshot.start(binary, config_path, log_path)
    if args.realtime:
        snapshot.make_realtime(tracker.pid)
    rt = ["chrt", "-f", "10"] if args.realtime else []
    try:
        subprocess.run(["taskset", "-c", "1", snapshot.PROBE, "fill", address, str(args.torrents),
                        str(args.peers_per_torrent)], capture_output=True, text=True, check=True)
        probe = subprocess.run([*rt, "taskset", "-c", "1", snapshot.PROBE, "probe", address, str(args.duration)],
                               capture_output=True, text=True, check=True)
        held = snapshot.metrics(metrics_port).get("aquatic_peers", 0.0)
    finally:
        snapshot.stop(tracker)
    load = os.getloadavg()[0]
    p = dict(re.findall(r"(\w+) ([0-9.]+)", probe.stdout.split("probe:", 1)[1]))
    inside, covered, counts, steps = sort_waits(log_path, probe.stderr)
    return p, inside, covered, counts, steps, held, load


def main():
    if len(sys.argv) == 3 and not sys.argv[1].startswith("-"):
        inside, covered, counts, steps = sort_waits(sys.argv[1], open(sys.argv[2]).read())
        print(f"snapshot windows: {counts[0]} ({covered['snapshot']:.2f} s), cleaning windows: {counts[1]} "
              f"({covered['cleaning']:.2f} s); waits >= 5 ms: {describe(inside)}; longest steps (ms): "
              + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ab", nargs=2, metavar=("A", "B"), required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--interval", type=int, default=5, help="snapshot.interval_secs")
    parser.add_argument("--cleaning", type=int, default=4, help="tracker.cleaning_interval_secs")
    parser.add_argument("--torrents", type=int, default=100_000)
    parser.add_argument("--peers-per-torrent", type=int, default=10)
    parser.add_argument("--realtime", action="store_true",
                        help="executor threads and probe SCHED_FIFO (as benches/snapshot.py --realtime)")
    args = parser.parse_args()
    print("command: " + " ".join(shlex.quote(a) for a in ["python3", "benches/snapshot_waits.py", *sys.argv[1:]]))
    if not os.path.exists(snapshot.PROBE):
        sys.exit(f"{snapshot.PROBE} is missing: cargo build --release -p aquatic --bins --examples")
    sides = [("A", args.ab[0]), ("B", args.ab[1])]
    print("round side  peers_held  max_ms  p99.9_ms  p99_ms  lost  snaps/cleans  waits>=5ms (count, max ms) by window"
          "                         longest steps ms: slice lists clean trim  load1")
    with tempfile.TemporaryDirectory(prefix="aquatic-waits-bench-") as work:
        for round_ in range(1, args.rounds + 1):
            order = sides if round_ % 2 else list(reversed(sides))
            for side, binary in order:
                p, inside, covered, counts, steps, held, load = run_one(args, binary, work, f"{round_}-{side}")
                # A pass in slices says its longest slice; one in one step
                # is as long as the pass.
                clean = steps["clean_slice"] or steps["clean"]
                print(f"{round_:>5} {side:>4}  {held:>10,.0f}  {float(p['max_ms']):>6.2f}  {float(p['p999_ms']):>8.2f}"
                      f"  {float(p['p99_ms']):>6.2f}  {int(p['lost']):>4}  {counts[0]:>5}/{counts[1]:<6}  "
                      f"{describe(inside):<60}  {steps['slice']:>5.2f} {steps['lists']:>5.2f} {clean:>5.2f}"
                      f" {steps['trim']:>5.2f}  {load:>5.2f}", flush=True)
    print("A = " + args.ab[0] + ", B = " + args.ab[1] + "; clean: the longest cleaning step (the whole pass when it "
          "is one step, else its longest slice); trim: malloc_trim's time in a pass.")


if __name__ == "__main__":
    sys.exit(main())
