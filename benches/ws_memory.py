#!/usr/bin/env python3
"""Resident memory of the tracker before, at and after a WebTorrent load.

Starts the binary with short cleaning intervals, opens CONNECTIONS
WebSocket connections that each announce in TORRENTS_PER_CONN torrents
(with one offer each, so relays run), closes them all, then samples
VmRSS from /proc every cleaning interval.

Usage: python3 benches/ws_memory.py [BINARY] [CONNECTIONS] [TORRENTS_PER_CONN]
BINARY is ours (default target/release/aquatic) or the original aquatic_ws
(configured the same way: one swarm and one socket worker, cleaning every
2 s). Needs: pip install websockets
"""

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

import websockets

import compare

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/aquatic"
CONNECTIONS = int(sys.argv[2]) if len(sys.argv) > 2 else 4000
TORRENTS_PER_CONN = int(sys.argv[3]) if len(sys.argv) > 3 else 20
CLEANING = 2


def binary_string(b):
    return "".join(chr(x) for x in b)


async def peer(url, i, hashes, opened, release):
    async with websockets.connect(url, max_size=None, ping_interval=None) as ws:
        peer_id = binary_string(os.urandom(20))
        for h in hashes:
            await ws.send(
                json.dumps(
                    {
                        "action": "announce",
                        "info_hash": h,
                        "peer_id": peer_id,
                        "numwant": 1,
                        "left": 1000,
                        "event": "started",
                        "offers": [
                            {
                                "offer_id": binary_string(os.urandom(20)),
                                "offer": {"type": "offer", "sdp": "v=0\r\n" + "a" * 200},
                            }
                        ],
                    }
                )
            )
        # Drain what arrives (responses and offers) for a moment.
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 0.5)
        except (asyncio.TimeoutError, websockets.ConnectionClosed):
            pass
        opened.append(i)
        await release.wait()


async def load(url, hashes):
    release = asyncio.Event()
    opened = []
    tasks = []
    for i in range(CONNECTIONS):
        chosen = random.sample(hashes, TORRENTS_PER_CONN)
        tasks.append(asyncio.create_task(peer(url, i, chosen, opened, release)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    while len(opened) < CONNECTIONS and not all(t.done() for t in tasks):
        await asyncio.sleep(0.2)
    return release, tasks, len(opened)


OURS_CONFIG = """workers = 2
log_level = "warn"
[runtime]
pin_cpus = false
[tracker]
cleaning_interval_secs = {cleaning}
[udp]
enabled = false
[http]
enabled = false
[ws]
address = "127.0.0.1:{port}"
"""


def write_peer_config(path, port):
    text = subprocess.run([BINARY, "-p"], capture_output=True, text=True, check=True).stdout
    for key, value in {
        "socket_workers": "2",
        "swarm_workers": "1",
        "log_level": '"error"',
        "address": f'"127.0.0.1:{port}"',
        "torrent_cleaning_interval": str(CLEANING),
        "connection_cleaning_interval": str(CLEANING),
    }.items():
        text = re.sub(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
    with open(path, "w") as f:
        f.write(text)


def main():
    port = compare.free_port()
    work = tempfile.mkdtemp(prefix="aquatic-wsmem-")
    config = os.path.join(work, "config.toml")
    if os.path.basename(BINARY) == "aquatic_ws":
        write_peer_config(config, port)
    else:
        with open(config, "w") as f:
            f.write(OURS_CONFIG.format(cleaning=CLEANING, port=port))
    proc = subprocess.Popen([BINARY, "-c", config], stdout=subprocess.PIPE, text=True)
    if os.path.basename(BINARY) == "aquatic_ws":
        time.sleep(1.5)
    else:
        while not proc.stdout.readline().startswith("aquatic: ready"):
            pass
    pid = proc.pid
    url = f"ws://127.0.0.1:{port}/announce"
    hashes = [binary_string(os.urandom(20)) for _ in range(CONNECTIONS * TORRENTS_PER_CONN // 4)]
    before = compare.status_mib(pid, "VmRSS:")
    print(f"before load:           {before:8.1f} MiB")

    async def run():
        started = time.time()
        release, tasks, n = await load(url, hashes)
        peak = compare.status_mib(pid, "VmRSS:")
        print(
            f"peak ({n} connections, {n * TORRENTS_PER_CONN} announces, {len(hashes)} torrents, "
            f"{time.time() - started:.0f} s): {peak:8.1f} MiB"
        )
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        return peak

    peak = asyncio.run(run())
    samples = []
    waited = 0
    for intervals in (1, 2, 4):
        time.sleep(intervals * CLEANING - waited)
        waited = intervals * CLEANING
        samples.append(compare.status_mib(pid, "VmRSS:"))
        print(f"{intervals} cleaning interval(s) after closing: {samples[-1]:8.1f} MiB")
    compare.stop(proc)
    returned = (peak - samples[-1]) / max(0.001, peak - before)
    print(f"returned to the OS: {returned * 100:.0f}% of what the load took")


if __name__ == "__main__":
    main()
