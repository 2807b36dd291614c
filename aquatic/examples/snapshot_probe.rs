//! The client side of `benches/snapshot.py`: fills a UDP tracker with many
//! distinct peers, and probes how long announces wait while snapshots are
//! written.
//!
//! ```text
//! snapshot_probe fill ADDRESS TORRENTS PEERS_PER_TORRENT
//!     announces TORRENTS x PEERS_PER_TORRENT peers (distinct peer ids and
//!     ports, numwant 0), 256 in flight; prints "filled N of M"
//! snapshot_probe probe ADDRESS SECONDS
//!     one announce every millisecond for SECONDS; prints the largest
//!     response delay, percentiles and the announces left unanswered
//! ```

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aquatic_udp_protocol::{
    AnnounceEvent, AnnounceRequest, ConnectRequest, ConnectionId, InfoHash, OwnedResponse, PeerId,
    Request, TransactionId,
};

fn socket_for(tracker: SocketAddr) -> UdpSocket {
    let bind: SocketAddr = if tracker.is_ipv6() {
        "[::1]:0".parse().expect("address")
    } else {
        "127.0.0.1:0".parse().expect("address")
    };
    let socket = UdpSocket::bind(bind).expect("bind");
    socket.connect(tracker).expect("connect");
    socket
}

fn connect(socket: &UdpSocket) -> ConnectionId {
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    for attempt in 0..10 {
        let mut bytes = Vec::new();
        Request::Connect(ConnectRequest {
            transaction_id: TransactionId(attempt),
        })
        .write(&mut bytes)
        .expect("write");
        socket.send(&bytes).expect("send");
        if let Ok(n) = socket.recv(&mut buf) {
            if let Ok(OwnedResponse::Connect(r)) = OwnedResponse::parse(&buf[..n], false) {
                return r.connection_id;
            }
        }
    }
    panic!("no connect response");
}

fn announce(id: ConnectionId, tid: i32, hash: [u8; 20], peer: [u8; 20], port: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    Request::Announce(AnnounceRequest {
        connection_id: id,
        transaction_id: TransactionId(tid),
        info_hash: InfoHash(hash),
        peer_id: PeerId(peer),
        bytes_downloaded: 0,
        bytes_left: 1,
        bytes_uploaded: 0,
        event: AnnounceEvent::Started,
        ip_address: None,
        key: 0,
        peers_wanted: 0,
        port,
    })
    .write(&mut bytes)
    .expect("write");
    bytes
}

/// Torrent `t`'s info hash: spread over the shards by its first bytes.
fn info_hash(t: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    let mixed = t.wrapping_mul(0x9e37_79b9) ^ 0x5bd1_e995;
    h[..4].copy_from_slice(&mixed.to_be_bytes());
    h[4..8].copy_from_slice(&t.to_be_bytes());
    h[19] = 0xaa;
    h
}

fn fill(tracker: SocketAddr, torrents: u32, per_torrent: u32) {
    const IN_FLIGHT: usize = 256;
    let socket = socket_for(tracker);
    let mut id = connect(&socket);
    let mut id_taken = Instant::now();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let total = u64::from(torrents) * u64::from(per_torrent);
    let mut answered = 0u64;
    let mut buf = [0u8; 2048];
    let mut next = 0u64;
    while next < total {
        if id_taken.elapsed() > Duration::from_secs(60) {
            id = connect(&socket);
            id_taken = Instant::now();
        }
        let mut sent = 0;
        while sent < IN_FLIGHT && next < total {
            let t = (next % u64::from(torrents)) as u32;
            let n = (next / u64::from(torrents)) as u32;
            let mut peer = [0u8; 20];
            peer[..8].copy_from_slice(&next.to_be_bytes());
            peer[8..12].copy_from_slice(b"-PB-");
            let port = 1024 + (n % 60_000) as u16;
            let bytes = announce(id, next as i32, info_hash(t), peer, port);
            if socket.send(&bytes).is_ok() {
                sent += 1;
            }
            next += 1;
        }
        for _ in 0..sent {
            match socket.recv(&mut buf) {
                Ok(_) => answered += 1,
                Err(_) => break,
            }
        }
    }
    println!("filled {answered} of {total}");
}

fn probe(tracker: SocketAddr, seconds: u64) {
    let socket = socket_for(tracker);
    let id = connect(&socket);
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let sent_at: Arc<Mutex<HashMap<i32, Instant>>> = Arc::default();
    let receiver = {
        let socket = socket.try_clone().expect("clone");
        let sent_at = sent_at.clone();
        let until = Instant::now() + Duration::from_secs(seconds) + Duration::from_secs(2);
        std::thread::spawn(move || {
            let mut delays = Vec::new();
            let mut buf = [0u8; 2048];
            while Instant::now() < until {
                let Ok(n) = socket.recv(&mut buf) else {
                    continue;
                };
                let now = Instant::now();
                if n < 8 {
                    continue;
                }
                let tid = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                let sent = sent_at
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&tid);
                if let Some(sent) = sent {
                    delays.push((now - sent, sent));
                }
            }
            delays
        })
    };
    let start = Instant::now();
    let mut tid = 0i32;
    let mut next = start;
    while start.elapsed() < Duration::from_secs(seconds) {
        tid += 1;
        // The same peer again and again: a re-announce, no swarm growth.
        let bytes = announce(id, tid, info_hash(u32::MAX), [7; 20], 7777);
        sent_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tid, Instant::now());
        let _ = socket.send(&bytes);
        next += Duration::from_millis(1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let mut timed = receiver.join().expect("receiver");
    timed.sort_unstable_by_key(|(delay, _)| std::cmp::Reverse(*delay));
    // The longest waits (the five longest, and any of 5 ms or more, up to
    // 200) and when they began (wall clock), to set beside the tracker's
    // log.
    let wall = std::time::SystemTime::now();
    let now = Instant::now();
    let long = timed
        .iter()
        .enumerate()
        .take_while(|(i, (delay, _))| *i < 5 || *delay >= Duration::from_millis(5))
        .take(200)
        .map(|(_, waited)| waited);
    for (delay, sent) in long {
        let at = wall - (now - *sent);
        let unix = at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        eprintln!(
            "probe: waited {:.2} ms from {unix:.3}",
            delay.as_secs_f64() * 1e3
        );
    }
    let mut delays: Vec<Duration> = timed.into_iter().map(|(delay, _)| delay).collect();
    delays.sort_unstable();
    let at = |q: f64| {
        delays
            .get(((delays.len() as f64 * q) as usize).min(delays.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let lost = sent_at.lock().unwrap_or_else(|e| e.into_inner()).len();
    println!(
        "probe: sent {tid} answered {} lost {lost} max_ms {:.2} p999_ms {:.2} p99_ms {:.2} p50_ms {:.3}",
        delays.len(),
        delays.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        at(0.999).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(0.5).as_secs_f64() * 1e3,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage =
        "usage: snapshot_probe fill ADDRESS TORRENTS PEERS_PER_TORRENT | probe ADDRESS SECONDS";
    let number = |i: usize| -> u64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{usage}"))
    };
    let address: SocketAddr = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{usage}"));
    match args.get(1).map(String::as_str) {
        Some("fill") => fill(address, number(3) as u32, number(4) as u32),
        Some("probe") => probe(address, number(3)),
        _ => panic!("{usage}"),
    }
}
