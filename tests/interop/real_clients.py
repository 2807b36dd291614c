#!/usr/bin/env python3
"""Real BitTorrent clients against the real tracker, on loopback.

Each check: a random file, a private v1 torrent (no DHT/PEX/LSD can find
peers behind the tracker's back), one real client seeding and a different
real client downloading through our tracker, and the checksum compared.

WebTorrent: two npm bittorrent-tracker clients exchange an offer and an
answer through the WebSocket tracker (webtorrent/offer_answer.mjs; WebRTC
itself is faked there, see fake-webrtc.mjs for why), and two WebTorrent
pages in headless Chromium move a buffer over real WebRTC, found through
our tracker only (webtorrent/browser.mjs).

Usage: real_clients.py PATH_TO_AQUATIC_BINARY
Prints one line per check and ends with "N passed, M failed"; exit 1 on
any failure.
"""

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import libtorrent as lt

CHECK_TIMEOUT = 120
FILE_SIZE = 3 * 1024 * 1024 + 12345


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# libtorrent caches UDP connection ids per tracker *address* (not port) for
# a minute, process-wide; a new tracker process has a new key and refuses
# them, and libtorrent retries the stale id until the cache expires. Each
# check's tracker therefore gets its own loopback address.
_next_host = [10]


class Tracker:
    def __init__(self, binary, workdir):
        self.binary = binary
        _next_host[0] += 1
        self.host = f"127.0.0.{_next_host[0]}"
        self.udp_port = free_port(socket.SOCK_DGRAM)
        self.http_port = free_port(socket.SOCK_STREAM)
        self.ws_port = free_port(socket.SOCK_STREAM)
        config = os.path.join(workdir, "tracker.toml")
        with open(config, "w") as f:
            f.write(
                f"""workers = 2
log_level = "{os.environ.get('INTEROP_LOG', 'info')}"
[runtime]
pin_cpus = false
[udp]
address = "{self.host}:{self.udp_port}"
[http]
address = "{self.host}:{self.http_port}"
[ws]
address = "{self.host}:{self.ws_port}"
[snapshot]
dir = "{os.path.join(workdir, 'state')}"
interval_secs = 0
"""
            )
        self.config = config
        self.log = open(os.path.join(workdir, "tracker.log"), "w")
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "-c", self.config], stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        deadline = time.time() + 20
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("tracker exited during start-up")
            if line.startswith("aquatic: ready"):
                return
        raise RuntimeError("tracker did not become ready")

    def udp(self):
        return f"udp://{self.host}:{self.udp_port}/announce"

    def http(self):
        return f"http://{self.host}:{self.http_port}/announce"

    def ws(self):
        return f"ws://{self.host}:{self.ws_port}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError("tracker did not stop within 10 s of SIGTERM")
        if code != 0:
            raise RuntimeError(f"tracker exited with {code}")

    def restart(self):
        """SIGTERM (the snapshot is written), then the same config again."""
        self.stop()
        self.start()


def make_torrent(data_dir, name, tracker_url):
    path = os.path.join(data_dir, name)
    with open(path, "wb") as f:
        f.write(os.urandom(FILE_SIZE))
    fs = lt.file_storage()
    lt.add_files(fs, path)
    t = lt.create_torrent(fs, 256 * 1024, flags=lt.create_torrent.v1_only)
    t.add_tracker(tracker_url)
    t.set_priv(True)
    lt.set_piece_hashes(t, data_dir)
    torrent_path = os.path.join(os.path.dirname(data_dir), name + ".torrent")
    with open(torrent_path, "wb") as f:
        f.write(lt.bencode(t.generate()))
    return path, torrent_path


def lt_session():
    port = free_port(socket.SOCK_STREAM)
    settings = {
        "listen_interfaces": f"127.0.0.1:{port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "ssrf_mitigation": False,
        "allow_multiple_connections_per_ip": True,
        "announce_to_all_trackers": True,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.status_notification
        | lt.alert.category_t.tracker_notification,
    }
    return lt.session(settings)


def lt_add(session, torrent_path, save_path):
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent_path)
    params.save_path = save_path
    return session.add_torrent(params)


def wait_lt_seeding(handle, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if handle.status().is_seeding:
            return
        time.sleep(0.2)
    raise RuntimeError("libtorrent did not start seeding (hash check)")


def aria2(args, cwd, timeout):
    base = [
        "aria2c",
        "--enable-dht=true",  # aria2 only speaks UDP trackers with DHT on
        "--dht-listen-port=" + str(free_port(socket.SOCK_DGRAM)),
        # A fresh DHT routing table each run: nodes saved by an earlier run
        # are dead, and aria2 waits on them before its UDP tracker requests.
        "--dht-file-path=" + os.path.join(cwd, "dht.dat"),
        "--dht-file-path6=" + os.path.join(cwd, "dht6.dat"),
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--listen-port=" + str(free_port(socket.SOCK_STREAM)),
        "--bt-tracker-connect-timeout=5",
        "--bt-tracker-interval=2",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--file-allocation=none",
        "--check-certificate=false",
    ]
    return subprocess.Popen(base + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def check_lt_seeds_aria2_downloads(tracker, work, url_of):
    data = os.path.join(work, "seed")
    os.makedirs(data)
    src, torrent = make_torrent(data, "payload.bin", url_of(tracker))
    session = lt_session()
    handle = lt_add(session, torrent, data)
    wait_lt_seeding(handle)
    handle.force_reannounce()
    out = os.path.join(work, "aria2-out")
    os.makedirs(out)
    proc = aria2(["--seed-time=0", "--dir=" + out, torrent], work, CHECK_TIMEOUT)
    try:
        output, _ = proc.communicate(timeout=CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise RuntimeError("aria2c did not finish in time:\n" + output[-2000:])
    if proc.returncode != 0:
        raise RuntimeError(f"aria2c exited {proc.returncode}:\n" + output[-2000:])
    got = os.path.join(out, "payload.bin")
    if sha256(got) != sha256(src):
        raise RuntimeError("checksum mismatch")
    del session


def wait_lt_announced(session, timeout=20):
    """Until the tracker has answered an announce of libtorrent's."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for alert in session.pop_alerts():
            if os.environ.get("INTEROP_DEBUG"):
                print("  alert:", alert.what(), alert.message())
            if isinstance(alert, lt.tracker_reply_alert):
                return
        time.sleep(0.1)
    raise RuntimeError("libtorrent's announce got no reply")


def restored_peers(work):
    """Peers the last start restored, from its log line."""
    with open(os.path.join(work, "tracker.log")) as f:
        lines = [l for l in f if "restored " in l and " peers from " in l]
    if not lines:
        return 0
    return int(lines[-1].split("restored ", 1)[1].split(" ", 1)[0])


def check_restart_between_seeder_and_downloader(tracker, work, url_of):
    """libtorrent seeds and announces; the tracker restarts (SIGTERM, the
    same state directory); aria2c's first announce finds the seeder from
    the snapshot, since libtorrent does not announce again within the
    30-minute interval."""
    data = os.path.join(work, "seed")
    os.makedirs(data)
    src, torrent = make_torrent(data, "payload.bin", url_of(tracker))
    session = lt_session()
    handle = lt_add(session, torrent, data)
    wait_lt_seeding(handle)
    handle.force_reannounce()
    wait_lt_announced(session)
    tracker.restart()
    if restored_peers(work) < 1:
        raise RuntimeError("the restarted tracker restored no peer")
    out = os.path.join(work, "aria2-out")
    os.makedirs(out)
    proc = aria2(["--seed-time=0", "--dir=" + out, torrent], work, CHECK_TIMEOUT)
    try:
        output, _ = proc.communicate(timeout=CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        raise RuntimeError("aria2c did not finish in time:\n" + output[-2000:])
    if proc.returncode != 0:
        raise RuntimeError(f"aria2c exited {proc.returncode}:\n" + output[-2000:])
    if sha256(os.path.join(out, "payload.bin")) != sha256(src):
        raise RuntimeError("checksum mismatch")
    del session


def check_aria2_seeds_lt_downloads(tracker, work, url_of):
    data = os.path.join(work, "seed")
    os.makedirs(data)
    src, torrent = make_torrent(data, "payload.bin", url_of(tracker))
    seeder = aria2(["--seed-ratio=0.0", "--seed-time=9999", "-V", "--dir=" + data, torrent], work, CHECK_TIMEOUT)
    try:
        session = lt_session()
        out = os.path.join(work, "lt-out")
        os.makedirs(out)
        handle = lt_add(session, torrent, out)
        deadline = time.time() + CHECK_TIMEOUT
        while time.time() < deadline and not handle.status().is_seeding:
            time.sleep(0.3)
            if os.environ.get("INTEROP_DEBUG"):
                for alert in session.pop_alerts():
                    print("  alert:", alert.what(), alert.message())
                st = handle.status()
                print(f"  t={time.time():.1f} peers={st.num_peers} progress={st.progress:.2f} state={st.state}")
            if int(time.time()) % 5 == 0:
                handle.force_reannounce()
        status = handle.status()
        if not status.is_seeding:
            raise RuntimeError(
                f"libtorrent did not finish: progress {status.progress:.2f}, peers {status.num_peers}, "
                f"tracker error {status.current_tracker!r}"
            )
        if sha256(os.path.join(out, "payload.bin")) != sha256(src):
            raise RuntimeError("checksum mismatch")
        # The tracker's scrape, as libtorrent asks for it, sees a seeder.
        handle.scrape_tracker()
        deadline = time.time() + 15
        while time.time() < deadline:
            for alert in session.pop_alerts():
                if isinstance(alert, lt.scrape_reply_alert):
                    if alert.complete >= 1:
                        return
                    raise RuntimeError(f"scrape shows {alert.complete} seeders")
                if isinstance(alert, lt.scrape_failed_alert):
                    raise RuntimeError("scrape failed: " + alert.error_message())
            time.sleep(0.2)
        raise RuntimeError("no scrape reply")
    finally:
        seeder.kill()
        seeder.wait()


WEBTORRENT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "webtorrent")


def run_node_check(args, what):
    """Runs node with `args` in webtorrent/; the script prints PASS/FAIL lines."""
    proc = subprocess.run(
        ["node", *args],
        cwd=WEBTORRENT_DIR,
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
    )
    for line in proc.stdout.splitlines():
        print("    " + line)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed:\n" + proc.stdout[-2000:] + proc.stderr[-2000:])


def check_npm_clients_offer_and_answer(tracker, work, url_of):
    """Two npm bittorrent-tracker clients: offer, answer, scrape, leave."""
    run_node_check(["--import", "./register.mjs", "offer_answer.mjs", url_of(tracker)], "npm client check")


def check_browsers_exchange_over_webrtc(tracker, work, url_of):
    """Two WebTorrent pages in headless Chromium: real WebRTC, via our tracker."""
    run_node_check(["browser.mjs", url_of(tracker)], "browser check")


def main():
    binary = sys.argv[1]
    checks = [
        ("udp: libtorrent seeds, aria2c downloads", check_lt_seeds_aria2_downloads, Tracker.udp),
        ("http: libtorrent seeds, aria2c downloads", check_lt_seeds_aria2_downloads, Tracker.http),
        ("http: aria2c seeds, libtorrent downloads and scrapes", check_aria2_seeds_lt_downloads, Tracker.http),
        ("udp: aria2c seeds, libtorrent downloads and scrapes", check_aria2_seeds_lt_downloads, Tracker.udp),
        ("udp: libtorrent seeds, the tracker restarts, aria2c downloads", check_restart_between_seeder_and_downloader, Tracker.udp),
        ("http: libtorrent seeds, the tracker restarts, aria2c downloads", check_restart_between_seeder_and_downloader, Tracker.http),
        ("ws: npm bittorrent-tracker clients exchange offer and answer", check_npm_clients_offer_and_answer, Tracker.ws),
        ("ws: two WebTorrent pages in Chromium exchange a buffer over WebRTC", check_browsers_exchange_over_webrtc, Tracker.ws),
    ]
    only = os.environ.get("INTEROP_ONLY")
    passed = failed = 0
    for name, check, url_of in checks:
        if only and only not in name:
            continue
        work = tempfile.mkdtemp(prefix="aquatic-interop-")
        started = time.time()
        tracker = None
        try:
            tracker = Tracker(binary, work)
            check(tracker, work, url_of)
            tracker.stop()
            tracker = None
            passed += 1
            print(f"PASS {name} ({time.time() - started:.1f} s)", flush=True)
        except Exception as err:  # noqa: BLE001 - every failure is reported
            failed += 1
            print(f"FAIL {name}: {err}", flush=True)
            traceback.print_exc()
            if tracker is not None:
                tracker.proc.kill()
                tracker.log.flush()
                with open(os.path.join(work, "tracker.log")) as f:
                    print("tracker log tail:\n" + f.read()[-3000:])
        finally:
            if tracker is not None:
                tracker.proc.kill()
            if os.environ.get("INTEROP_KEEP"):
                print("kept " + work)
            else:
                shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
