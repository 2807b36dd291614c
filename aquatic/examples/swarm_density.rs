//! Resident memory of one BitTorrent shard holding the swarms of
//! aquatic_udp_load_test's default load (1 000 000 torrents, 2 000 000
//! peers), without sockets: the same torrent weights as the load tester
//! (`0.5 + e^(6.5 - 500 i / n)`), every peer announcing its torrent
//! `PASSES` times in turn, seeding with probability 0.75 each time, from
//! one of four loopback addresses, peer id all zeros (as the load tester
//! sends). What a tracker holding all 2 000 000 peers needs for them, even
//! on a machine too loaded for the load tester to announce every peer.
//!
//! `cargo run --release -p aquatic --example swarm_density`

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use aquatic::swarm::{BtAnnounce, BtShard, PeerIdUse};
use aquatic_common::{time::SecondsSinceStart, InfoHash, PeerId, SelectedPeers};
use rand::{rngs::SmallRng, Rng, SeedableRng};

const TORRENTS: usize = 1_000_000;
const PEERS: usize = 2_000_000;
const PASSES: usize = 2;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut rng = SmallRng::seed_from_u64(0xc3a5_8be6_17b3_acce);
    // Cumulative weights, sampled by binary search.
    let n = TORRENTS as f64;
    let mut cumulative = Vec::with_capacity(TORRENTS);
    let mut total = 0.0;
    for i in 0..TORRENTS {
        total += n / PEERS as f64 + (6.5 - 500.0 * i as f64 / n).exp();
        cumulative.push(total);
    }
    let peers: Vec<(u32, u16, u8)> = (0..PEERS)
        .map(|_| {
            let x = rng.gen::<f64>() * total;
            let torrent = cumulative.partition_point(|&c| c < x).min(TORRENTS - 1) as u32;
            (torrent, rng.gen_range(1..=u16::MAX), rng.gen_range(1..=4))
        })
        .collect();
    drop(cumulative);
    let before = status_kib("VmRSS:");
    let mut shard = BtShard::default();
    let mut out = SelectedPeers::default();
    let timeout = Duration::from_secs(3600);
    for pass in 0..PASSES {
        for &(torrent, port, ip) in &peers {
            let mut info_hash = InfoHash([0; 20]);
            info_hash.0[..4].copy_from_slice(&torrent.to_be_bytes());
            info_hash.0[4..8].copy_from_slice(&0x5eed_u32.to_be_bytes());
            let seeder = rng.gen_bool(0.75);
            let request = BtAnnounce {
                info_hash,
                peer_id: PeerId([0; 20]),
                ip: IpAddr::V4(Ipv4Addr::new(127, 0, 0, ip)),
                port,
                stopped: false,
                completed: false,
                bytes_left: Some(if seeder { 0 } else { 1 }),
                numwant: 30,
                private: None,
                peer_ids: PeerIdUse::Hashed,
            };
            shard.announce(
                timeout,
                SecondsSinceStart(pass as u32),
                &mut rng,
                &request,
                &mut out,
            );
        }
    }
    let held = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    let counts = shard.peer_counts();
    let live = counts.seeders + counts.leechers;
    println!(
        "torrents {} peers {live} (seeders {}); shard RSS {:.1} MiB ({:.1} bytes per peer); \
         process peak {:.1} MiB (includes the {} load records, {:.1} MiB)",
        shard.torrents(),
        counts.seeders,
        (held - before) as f64 / 1024.0,
        (held - before) as f64 * 1024.0 / live as f64,
        peak as f64 / 1024.0,
        PEERS,
        (PEERS * std::mem::size_of::<(u32, u16, u8)>()) as f64 / (1024.0 * 1024.0),
    );
}
