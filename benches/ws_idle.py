#!/usr/bin/env python3
"""Resident memory per idle WebSocket connection: ours against aquatic_ws.

Per round and tracker (one worker, tracker on core 0, clients on core 1):
start it, read VmRSS, open CONNECTIONS connections (plain WS or WSS) that
each announce one torrent (no offers) and then stay silent, read VmRSS
again once every connection has had its announce answered, and report
(after - before) / connections. Trackers alternate within a round (ours
first in odd rounds, aquatic_ws first in even ones); the summary is the
median over the rounds. Then the connections close and VmRSS is read
once more after two cleaning intervals: memory must come back.

The open-file limit is raised to what CONNECTIONS needs (soft up to the
hard limit), for this script and the tracker it starts;
max_connections_per_worker is raised on both trackers.

Usage: /usr/bin/python3 benches/ws_idle.py [--connections 10000] [--rounds 4]
           [--tls both|ws|wss] [--ours target/release/aquatic] [--peers DIR]
           [--trackers ours,aquatic_ws] [--base OTHER_BUILD_OF_OURS]
With --base, a tracker "base" (another build of ours, e.g. main's, same
config as ours) can be listed in --trackers: ours,base,aquatic_ws.
Needs Debian's python3-websockets (installed with apt-get when missing).
"""

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

import compare

CLEANING = 2
# Extra [ws] lines for ours (experiments: AQUATIC_WS_IDLE_EXTRA="outgoing_queue = 1").
EXTRA_OURS = [x for x in os.environ.get("AQUATIC_WS_IDLE_EXTRA", "").split(";") if x]


def raise_nofile(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, needed))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def ours_config(port, work, tls, connections):
    lines = [
        "workers = 1",
        'log_level = "error"',
        "[runtime]",
        "pin_cpus = false",
        "[tracker]",
        f"cleaning_interval_secs = {CLEANING}",
        "[udp]",
        "enabled = false",
        "[http]",
        "enabled = false",
        "[ws]",
        f'address = "127.0.0.1:{port}"',
        f"max_connections_per_worker = {connections + 100}",
        # Silent connections are not pinged during the measurement.
        "idle_timeout_secs = 3600",
    ] + EXTRA_OURS + [
    ]
    if tls:
        lines += [f'tls_certificate_path = "{work}/cert.pem"', f'tls_private_key_path = "{work}/key.pem"']
    return "\n".join(lines) + "\n"


def aquatic_ws_config(binary, port, work, tls, connections):
    text = compare.printed_config(binary)
    values = {("", "socket_workers"): "1", ("", "swarm_workers"): "1", ("", "log_level"): '"error"',
              ("network", "address"): f'"127.0.0.1:{port}"',
              ("network", "enable_tls"): "true" if tls else "false",
              ("cleaning", "torrent_cleaning_interval"): str(CLEANING),
              ("cleaning", "connection_cleaning_interval"): str(CLEANING),
              ("cleaning", "max_connection_idle"): "3600"}
    if tls:
        values.update({("network", "tls_certificate_path"): f'"{work}/cert.pem"',
                       ("network", "tls_private_key_path"): f'"{work}/key.pem"'})
    text = compare.set_keys(text, values)
    # Whatever the connection cap is called in this version, raise it.
    text = re.sub(r"^(max_connections\w*) = \d+", rf"\g<1> = {connections + 100}", text, flags=re.M)
    return text


async def client(url, ssl_context, index, ready, release):
    import websockets
    async with websockets.connect(url, ssl=ssl_context, max_size=None, ping_interval=None,
                                  open_timeout=60) as ws:
        await ws.send(json.dumps({
            "action": "announce",
            "info_hash": "".join(chr(b) for b in index.to_bytes(20, "big")),
            "peer_id": "".join(chr(b) for b in (index + 1 << 64).to_bytes(20, "big")),
            "numwant": 1, "left": 1000, "event": "started", "offers": [],
        }))
        await asyncio.wait_for(ws.recv(), 60)
        ready.append(index)
        await release.wait()


async def measure_connections(pid, url, tls, connections):
    ssl_context = None
    if tls:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ssl_context.check_hostname = False
        ssl_context.verify_mode = ssl.CERT_NONE
    before = compare.status_mib(pid, "VmRSS:")
    ready, release, tasks = [], asyncio.Event(), []
    for i in range(connections):
        tasks.append(asyncio.create_task(client(url, ssl_context, i, ready, release)))
        if i % 100 == 99:
            await asyncio.sleep(0.02 if not tls else 0.1)
    while len(ready) < connections and not all(t.done() for t in tasks):
        await asyncio.sleep(0.2)
    failed = [t for t in tasks if t.done() and t.exception() is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} connections failed: {failed[0].exception()!r}")
    await asyncio.sleep(1)
    held = compare.status_mib(pid, "VmRSS:")
    release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return before, held, len(ready)


def run_one(name, binary, tls, connections, work):
    port = compare.free_port()
    cfg = os.path.join(work, f"{name}.toml")
    with open(cfg, "w") as f:
        if name in ("ours", "base"):
            f.write(ours_config(port, work, tls, connections))
        else:
            f.write(aquatic_ws_config(binary, port, work, tls, connections))
    log = open(os.path.join(work, f"{name}.log"), "w")
    tracker = subprocess.Popen(["taskset", "-c", "0", binary, "-c", cfg], stdout=log, stderr=log)
    try:
        compare.wait_for_port(port, "ws")
        time.sleep(1)
        scheme = "wss" if tls else "ws"
        before, held, n = asyncio.run(measure_connections(tracker.pid, f"{scheme}://127.0.0.1:{port}/announce",
                                                          tls, connections))
        time.sleep(2 * CLEANING + 1)
        after = compare.status_mib(tracker.pid, "VmRSS:")
        if tracker.poll() is not None:
            raise RuntimeError(f"{name} exited during the run")
        return {"before": before, "held": held, "after": after, "n": n,
                "per_conn_kib": (held - before) * 1024 / max(1, n)}
    finally:
        compare.stop(tracker)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tls", choices=["both", "ws", "wss"], default="both")
    parser.add_argument("--ours", default=os.path.join(compare.ROOT, "target/release/aquatic"))
    parser.add_argument("--peers", default=os.path.join(compare.HERE, ".peers"))
    parser.add_argument("--trackers", default="ours,aquatic_ws")
    parser.add_argument("--base", help="another build of ours, listed as tracker 'base'")
    args = parser.parse_args()
    try:
        import websockets  # noqa: F401
    except ImportError:
        subprocess.run(["apt-get", "install", "-y", "python3-websockets"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        os.execv(sys.executable, [sys.executable, *sys.argv])
    limit = raise_nofile(args.connections * 2 + 1000)
    if limit < args.connections + 200:
        sys.exit(f"open-file limit {limit} is too low for {args.connections} connections (raise the hard limit)")
    trackers = args.trackers.split(",")
    if "aquatic_ws" in trackers:
        compare.ensure_peers(args.peers, ["aquatic_ws"])
    binaries = {"ours": args.ours, "aquatic_ws": os.path.join(args.peers, "bin", "aquatic_ws")}
    if "base" in trackers:
        if not args.base:
            sys.exit("tracker 'base' needs --base PATH")
        binaries["base"] = args.base
    work = tempfile.mkdtemp(prefix="aquatic-wsidle-")
    compare.make_certificate(work)
    modes = {"both": [False, True], "ws": [False], "wss": [True]}[args.tls]
    print("# " + " ".join(["python3", *sys.argv]))
    print(f"# {args.connections} idle connections, each announced one torrent; {args.rounds} rounds, "
          "alternating; tracker on core 0 (one worker), clients on core 1")
    print("| transport | round | tracker | RSS before MiB | RSS holding MiB | KiB per connection "
          "| RSS 2 cleanings after close MiB |")
    print("|---|---|---|---|---|---|---|", flush=True)
    results = {}
    os.sched_setaffinity(0, {1})
    for tls in modes:
        label = "wss" if tls else "ws"
        for round_ in range(1, args.rounds + 1):
            order = trackers if round_ % 2 == 1 else list(reversed(trackers))
            for name in order:
                r = run_one(name, binaries[name], tls, args.connections, work)
                results.setdefault((label, name), []).append(r)
                print(f"| {label} | {round_} | {name} | {r['before']:.1f} | {r['held']:.1f} | "
                      f"{r['per_conn_kib']:.1f} | {r['after']:.1f} |", flush=True)
    print()
    print("| transport | tracker | rounds | median KiB per idle connection |")
    print("|---|---|---|---|")
    for (label, name), runs in results.items():
        print(f"| {label} | {name} | {len(runs)} | {statistics.median(r['per_conn_kib'] for r in runs):.1f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
