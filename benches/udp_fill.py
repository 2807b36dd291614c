#!/usr/bin/env python3
"""Fills a UDP tracker with aquatic_udp_load_test's own peers, each announcing once.

aquatic_udp_load_test 0.9 announces only as fast as the tracker and the
machine let it, so on a loaded machine a short run leaves every tracker
with fewer peers than the load's 2 000 000, and with different counts.
This fills the tracker first, with exactly the peers the load tester will
announce (the same torrents, ports, address and peer id), so that the load
test that follows re-announces peers the tracker already holds and every
tracker holds the same set while it is measured.

Which peers: load_test_peers() reproduces the load tester's create_peers()
(rand 0.8's SmallRng seeded with 0xc3a58be617b3acce; per peer a scrape
list of gen_range(1..=10) torrents, the announce torrent, the port
(a NonZeroU16: rng.gen::<u16>() drawn again while 0) and the socket
index, in that order; torrents drawn from
rand_distr 0.4's WeightedAliasIndex over the weights
0.5 + e^(6.5 - 500 i / n)). The load tester sends every announce from
127.0.0.1 with an all-zero peer id, so this does too. Every tracker here
keys a UDP peer by its address and port within a torrent (ours also by a
hash of the peer id, the same zero id for all), so the distinct peers are
the distinct (torrent, port) pairs of that list: distinct_peers() counts
them (1 996 087 of the 2 000 000, over 429 073 torrents: the load tester
draws ports at random, and two peers of one torrent sometimes draw the
same port). The list takes about a minute to compute in Python (two on a
loaded machine) and is cached in benches/.peers.

How: SOCKETS sockets bound to 127.0.0.1, each with a connection id from a
connect request, renewed every RECONNECT_SECS (under every tracker's
connection-id lifetime, 120 s for ours and aquatic_udp, about 2 minutes
for opentracker). Announces go out in turn over the sockets with at most
WINDOW (128) unanswered, so that the tracker's receive buffer seldom
overflows (opentracker keeps the kernel's default buffer: with 2048
unanswered it dropped about 30 % of them, with 128 about 1 %); when no
answer comes within 100 ms the rest count as dropped. The transaction id is
the peer's index, so an announce that got no answer is sent again in a
later pass. Every announce asks for one peer
(numwant 1): the fill stores peers, the load test measures responses.
A tracker that refuses an announce answers with an error, counted apart.

Usage (standalone): python3 benches/udp_fill.py PORT [--peers 2000000]
"""

import argparse
import array
import math
import os
import random
import select
import socket
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
SOCKETS = 4
WINDOW = 128
RECONNECT_SECS = 30
PROTOCOL_ID = 0x41727101980
SCRAPE_MAX_TORRENTS = 10  # the load tester's default
SOCKETS_PER_WORKER = 4  # the load tester's default


class SmallRng:
    """rand 0.8's SmallRng on 64-bit (Xoshiro256++) from seed_from_u64 (see compare.load_test_info_hashes)."""

    def __init__(self, seed):
        state, words = seed, []
        for _ in range(8):
            state = (state * 6364136223846793005 + 11634580027462260723) & U64
            xorshifted = (((state >> 18) ^ state) >> 27) & U32
            rot = state >> 59
            words.append(((xorshifted >> rot) | (xorshifted << (32 - rot))) & U32)
        self.s = [words[i] | words[i + 1] << 32 for i in range(0, 8, 2)]


def pairwise_sum(values, lo, hi):
    """rand_distr 0.4's pairwise_sum over values[lo:hi]: plain sums of at most 32, halves above."""
    if hi - lo <= 32:
        total = 0.0
        for i in range(lo, hi):
            total += values[i]
        return total
    mid = lo + (hi - lo) // 2
    return pairwise_sum(values, lo, mid) + pairwise_sum(values, mid, hi)


def alias_table(weights):
    """rand_distr 0.4's WeightedAliasIndex::new for f64 weights: (aliases, no_alias_odds, weight_sum, f64 scale)."""
    n = len(weights)
    weight_sum = pairwise_sum(weights, 0, n)
    odds = [w * float(n) for w in weights]
    none = U32
    aliases = [0] * n
    smalls = bigs = none
    for i, o in enumerate(odds):
        if o < weight_sum:
            aliases[i], smalls = smalls, i
        else:
            aliases[i], bigs = bigs, i
    while smalls != none and bigs != none:
        s = smalls
        smalls = aliases[s]
        b = bigs
        bigs = aliases[b]
        aliases[s] = b
        odds[b] = odds[b] - weight_sum + odds[s]
        if odds[b] < weight_sum:
            aliases[b], smalls = smalls, b
        else:
            aliases[b], bigs = bigs, b
    while smalls != none:
        i = smalls
        smalls = aliases[i]
        odds[i] = weight_sum
    while bigs != none:
        i = bigs
        bigs = aliases[i]
        odds[i] = weight_sum
    # Uniform::<f64>::new(0.0, weight_sum): the largest scale with scale * (1 - 2^-52) < weight_sum.
    max_rand = 1.0 - 2.0 ** -52
    scale = weight_sum
    while scale * max_rand >= weight_sum:
        scale = struct.unpack("<d", struct.pack("<Q", struct.unpack("<Q", struct.pack("<d", scale))[0] - 1))[0]
    return aliases, odds, scale


def load_test_peers(torrents, peers, cache_dir=None):
    """(torrent index per peer, port per peer) as aquatic_udp_load_test 0.9 creates them; cached on disk."""
    cache = None
    if cache_dir:
        cache = os.path.join(cache_dir, f"load-test-peers-v2-{torrents}-{peers}.bin")
        if os.path.exists(cache):
            with open(cache, "rb") as f:
                index = array.array("I")
                index.fromfile(f, peers)
                ports = array.array("H")
                ports.fromfile(f, peers)
            return index, ports
    floor = torrents / peers
    weights = [floor + math.exp(6.5 - (500.0 * i) / torrents) for i in range(torrents)]
    aliases, odds, scale = alias_table(weights)
    del weights
    n = torrents
    n_zone = U32 - ((U32 + 1 - n) % n)  # Uniform::<u32>::new(0, n)
    r_zone = ((SCRAPE_MAX_TORRENTS << (64 - SCRAPE_MAX_TORRENTS.bit_length())) - 1) & U64
    s0, s1, s2, s3 = SmallRng(0xc3a58be617b3acce).s
    index = array.array("I", bytes(4 * peers))
    ports = array.array("H", bytes(2 * peers))
    pack_q, unpack_d = struct.Struct("<Q").pack, struct.Struct("<d").unpack
    exponent = 0x3FF0000000000000
    for p in range(peers):
        # Xoshiro256++ is inlined (a function call per draw would double the time).
        # gen_range(1..SCRAPE_MAX_TORRENTS + 1), usize: widening multiply, approximate zone.
        while True:
            t = (s0 + s3) & U64
            v = ((((t << 23) | (t >> 41)) & U64) + s0) & U64
            t = (s1 << 17) & U64
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = ((s3 << 45) | (s3 >> 19)) & U64
            wide = v * SCRAPE_MAX_TORRENTS
            if wide & U64 <= r_zone:
                draws = (wide >> 64) + 1 + 1  # the scrape torrents, then the announce torrent
                break
        chosen = 0
        while draws:
            # uniform_index: u32 = upper half of next_u64, widening multiply by n, exact zone.
            t = (s0 + s3) & U64
            v = ((((t << 23) | (t >> 41)) & U64) + s0) & U64
            t = (s1 << 17) & U64
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = ((s3 << 45) | (s3 >> 19)) & U64
            wide = (v >> 32) * n
            if wide & U32 > n_zone:
                continue
            candidate = wide >> 32
            # uniform_within_weight_sum: f64 in [0, 1) from the upper 52 bits, times scale.
            t = (s0 + s3) & U64
            v = ((((t << 23) | (t >> 41)) & U64) + s0) & U64
            t = (s1 << 17) & U64
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = ((s3 << 45) | (s3 >> 19)) & U64
            x = (unpack_d(pack_q((v >> 12) | exponent))[0] - 1.0) * scale
            chosen = candidate if x < odds[candidate] else aliases[candidate]
            draws -= 1
        index[p] = chosen
        # The port: Port::new takes a NonZeroU16, drawn as rng.gen::<u16>() (next_u32() as u16)
        # until it is not 0. Then the socket index (gen_range(0..4), u8: never rejects), which
        # only needs its draw.
        port = 0
        while True:
            t = (s0 + s3) & U64
            v = ((((t << 23) | (t >> 41)) & U64) + s0) & U64
            t = (s1 << 17) & U64
            s2 ^= s0
            s3 ^= s1
            s1 ^= s2
            s0 ^= s3
            s2 ^= t
            s3 = ((s3 << 45) | (s3 >> 19)) & U64
            if port:
                break
            port = (v >> 32) & 0xFFFF
        ports[p] = port
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        with open(cache + ".tmp", "wb") as f:
            index.tofile(f)
            ports.tofile(f)
        os.replace(cache + ".tmp", cache)
    return index, ports


def distinct_peers(index, ports):
    """How many different peers the list holds: distinct (torrent, port) pairs (one address, one peer id)."""
    return len({(i << 16) | p for i, p in zip(index, ports)})


def peers_per_torrent(index):
    counts = {}
    for i in index:
        counts[i] = counts.get(i, 0) + 1
    return counts


class Filler:
    def __init__(self, address, info_hashes, index, ports, seeder_probability=0.75):
        self.address = address
        self.info_hashes = info_hashes
        self.index = index
        self.ports = ports
        rng = random.Random(0)
        # left = 0 (seeder) or 50 (leecher), as the load tester chooses, once per peer.
        self.left = bytes(0 if rng.random() < seeder_probability else 1 for _ in range(len(index)))
        self.sockets = []
        for _ in range(SOCKETS):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind(("127.0.0.1", 0))
            s.connect(address)
            s.setblocking(False)
            self.sockets.append(s)
        self.connection_ids = [0] * SOCKETS
        self.connected_at = 0.0
        self.answered = bytearray(len(index))
        self.counts = {"sent": 0, "announce": 0, "error": 0, "other": 0, "passes": 0}

    def connect(self):
        """A fresh connection id per socket (retried until every socket has one)."""
        pending = set(range(SOCKETS))
        deadline = time.time() + 30
        while pending:
            if time.time() > deadline:
                raise RuntimeError(f"no connect response from {self.address} within 30 s")
            for i in pending:
                self.sockets[i].send(struct.pack(">QII", PROTOCOL_ID, 0, 0xC0000000 | i))
            end = time.time() + 0.5
            while pending and time.time() < end:
                ready, _, _ = select.select([self.sockets[i] for i in pending], [], [], 0.1)
                for s in ready:
                    data = s.recv(2048)
                    if len(data) >= 16 and data[:4] == b"\0\0\0\0":
                        action, tid, cid = struct.unpack(">IIQ", data[:16])
                        i = tid & 0xFF
                        if tid >> 24 == 0xC0 and i in pending:
                            self.connection_ids[i] = cid
                            pending.discard(i)
        self.connected_at = time.time()

    def drain(self, timeout):
        """Reads every answer waiting (waiting up to timeout for the first); returns how many."""
        got = 0
        ready, _, _ = select.select(self.sockets, [], [], timeout)
        unpack = struct.Struct(">II").unpack_from
        for s in ready:
            while True:
                try:
                    data = s.recv(2048)
                except BlockingIOError:
                    break
                if len(data) < 8:
                    continue
                action, tid = unpack(data)
                if tid >= 0xC0000000:
                    continue  # a late connect answer
                got += 1
                if action == 1 and tid < len(self.answered):
                    if not self.answered[tid]:
                        self.answered[tid] = 1
                        self.counts["announce"] += 1
                elif action == 3 and tid < len(self.answered):
                    if not self.answered[tid]:
                        self.answered[tid] = 2
                        self.counts["error"] += 1
                else:
                    self.counts["other"] += 1
        return got

    def run(self, max_passes=5):
        """Announces every peer until each has had an answer (or max_passes passes)."""
        start = time.time()
        request = struct.Struct(">QII20s20sQQQIIIiH")
        hashes, index, ports, left = self.info_hashes, self.index, self.ports, self.left
        zero_id = bytes(20)
        for _ in range(max_passes):
            todo = [p for p in range(len(index)) if not self.answered[p]]
            if not todo:
                break
            self.counts["passes"] += 1
            outstanding = 0
            for n, p in enumerate(todo):
                if n % 4096 == 0 and time.time() - self.connected_at > RECONNECT_SECS:
                    outstanding = max(0, outstanding - self.drain(0.2))
                    self.connect()
                k = n % SOCKETS
                packet = request.pack(self.connection_ids[k], 1, p, hashes[index[p]], zero_id, 50, 50 * left[p],
                                      50, 0, 0, 0, 1, ports[p])
                sock = self.sockets[k]
                try:
                    sock.send(packet)
                except BlockingIOError:
                    self.drain(0.01)
                    sock.send(packet)
                self.counts["sent"] += 1
                outstanding += 1
                if outstanding >= WINDOW:
                    got = self.drain(0.1)
                    # Nothing within 100 ms: the rest were dropped; the next pass sends them again.
                    outstanding = outstanding - got if got else 0
            deadline = time.time() + 2
            while time.time() < deadline:
                if not self.drain(0.3):
                    break
        self.counts["seconds"] = time.time() - start
        self.counts["unanswered"] = len(index) - self.counts["announce"] - self.counts["error"]
        for s in self.sockets:
            s.close()
        return self.counts


def main():
    sys.path.insert(0, HERE)
    import compare

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("--torrents", type=int, default=1_000_000)
    parser.add_argument("--peers", type=int, default=2_000_000)
    parser.add_argument("--cache", default=os.path.join(HERE, ".peers"))
    args = parser.parse_args()
    started = time.time()
    index, ports = load_test_peers(args.torrents, args.peers, args.cache)
    print(f"peer list: {time.time() - started:.1f} s, {distinct_peers(index, ports):,} distinct peers over "
          f"{len(peers_per_torrent(index)):,} torrents", flush=True)
    hashes = compare.load_test_info_hashes(args.torrents)
    counts = Filler(("127.0.0.1", args.port), hashes, index, ports).run()
    print(counts)


if __name__ == "__main__":
    sys.exit(main())
