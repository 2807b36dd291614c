//! Kernel steering (`udp.kernel_steering`): announces and scrapes reach the
//! executor that owns their torrent without a mesh hop; connects and junk
//! spread over the executors instead of piling onto one.
//!
//! Read through the metrics endpoint: `aquatic_udp_routed_total{action,
//! route}` per executor says whether a request was answered where it
//! arrived (local) or crossed the mesh (forwarded).

mod common;

use std::{net::UdpSocket, time::Duration};

use aquatic_udp_protocol::AnnounceEvent;
use common::{
    base_config, eventually, hash_on_shard,
    metrics_client::{metrics_text, sum},
    udp_client::{counts, Client},
    Tracker,
};
use rand::{rngs::SmallRng, Rng, SeedableRng};

/// Announces sent per client family in the routing tests.
const ANNOUNCES: usize = 150;

fn config(workers: usize, steering: bool) -> String {
    base_config()
        .replace("workers = 2", &format!("workers = {workers}"))
        .replace("[udp]\n", &format!("[udp]\nkernel_steering = {steering}\n"))
        + "[metrics]\nenabled = true\naddress = \"127.0.0.1:0\"\n"
}

/// `name{labels}` for each executor `0..workers`, from one reading.
fn per_executor(text: &str, name: &str, labels: &[&str], workers: usize) -> Vec<f64> {
    (0..workers)
        .map(|i| {
            let executor = format!("executor=\"{i}\"");
            let mut all = labels.to_vec();
            all.push(&executor);
            sum(text, name, &all)
        })
        .collect()
}

const ROUTED: &str = "aquatic_udp_routed_total";
const ANNOUNCE_LOCAL: [&str; 2] = ["action=\"announce\"", "route=\"local\""];
const ANNOUNCE_FORWARDED: [&str; 2] = ["action=\"announce\"", "route=\"forwarded\""];

/// Waits until the executors' published counters hold `announces`
/// routed announces, then returns (local, forwarded) per executor.
fn routed_announces(tracker: &Tracker, workers: usize, announces: usize) -> (Vec<f64>, Vec<f64>) {
    let metrics = tracker.metrics.expect("metrics");
    eventually(Duration::from_secs(10), || {
        let text = metrics_text(metrics);
        let local = per_executor(&text, ROUTED, &ANNOUNCE_LOCAL, workers);
        let forwarded = per_executor(&text, ROUTED, &ANNOUNCE_FORWARDED, workers);
        let total: f64 = local.iter().chain(&forwarded).sum();
        (total >= announces as f64).then_some((local, forwarded))
    })
    .expect("every announce counted within 10 s")
}

/// Announces `ANNOUNCES` random torrents from one IPv4 and one IPv6
/// client, each answered.
fn announce_random_torrents(tracker: &Tracker, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    for address in [tracker.udp_v4(), tracker.udp_v6()] {
        let mut client = Client::new(address);
        for i in 0..ANNOUNCES {
            let mut hash = [0u8; 20];
            rng.fill(&mut hash[..]);
            let reply = client.announce(hash, 1, 1000 + i as u16, AnnounceEvent::Started, 10);
            // Our own peer, just announced: the swarm has it.
            assert_eq!(counts(&reply), (0, 1));
        }
    }
}

fn steering_gauge(tracker: &Tracker) -> f64 {
    let text = metrics_text(tracker.metrics.expect("metrics"));
    sum(&text, "aquatic_udp_kernel_steering", &[])
}

fn announces_arrive_at_their_owner(workers: usize) {
    let tracker = Tracker::start("udp-steering", &config(workers, true));
    announce_random_torrents(&tracker, workers as u64);
    let (local, forwarded) = routed_announces(&tracker, workers, 2 * ANNOUNCES);
    assert_eq!(
        forwarded,
        vec![0.0; workers],
        "no announce crossed the mesh"
    );
    assert_eq!(local.iter().sum::<f64>(), (2 * ANNOUNCES) as f64);
    // Random torrents live on every shard, and each executor answered its own.
    assert!(
        local.iter().all(|&n| n > 0.0),
        "local per executor: {local:?}"
    );
    assert_eq!(steering_gauge(&tracker), workers as f64);
}

#[test]
fn with_two_workers_announces_arrive_at_their_owner() {
    announces_arrive_at_their_owner(2);
}

#[test]
fn with_four_unpinned_workers_announces_arrive_at_their_owner() {
    announces_arrive_at_their_owner(4);
}

#[test]
fn without_steering_announces_cross_the_mesh() {
    let workers = 2;
    let tracker = Tracker::start("udp-no-steering", &config(workers, false));
    announce_random_torrents(&tracker, 9);
    let (local, forwarded) = routed_announces(&tracker, workers, 2 * ANNOUNCES);
    let forwarded: f64 = forwarded.iter().sum();
    // One client socket per family: the kernel's hash puts each on one
    // executor, which owns about half the torrents.
    assert!(forwarded > 0.0, "forwarded {forwarded}, local {local:?}");
    assert_eq!(
        forwarded + local.iter().sum::<f64>(),
        (2 * ANNOUNCES) as f64
    );
    assert_eq!(steering_gauge(&tracker), 0.0);
}

#[test]
fn scrapes_route_by_their_first_hash_and_still_span_shards() {
    let workers = 4;
    let tracker = Tracker::start("udp-steering-scrape", &config(workers, true));
    let mut client = Client::new(tracker.udp_v4());
    // Torrent s (on shard s) gets s + 1 leechers.
    let hashes: Vec<[u8; 20]> = (0..workers as u64)
        .map(|s| hash_on_shard(s, workers as u64, 7))
        .collect();
    for (s, &hash) in hashes.iter().enumerate() {
        for peer in 0..=s {
            client.announce(
                hash,
                peer as u8,
                2000 + peer as u16,
                AnnounceEvent::Started,
                5,
            );
        }
    }
    // Every shard at once, in an order that starts on shard 2.
    let order = [2, 0, 3, 1];
    let stats = client.scrape(&order.map(|s| hashes[s]));
    assert_eq!(stats, order.map(|s| (0, s as i32 + 1, 0)).to_vec());
    // Two torrents of shard 3: answered where the kernel delivered it.
    let same_shard = [hashes[3], hash_on_shard(3, workers as u64, 8)];
    assert_eq!(client.scrape(&same_shard), vec![(0, 4, 0), (0, 0, 0)]);

    let metrics = tracker.metrics.expect("metrics");
    let (local, forwarded) = eventually(Duration::from_secs(10), || {
        let text = metrics_text(metrics);
        let local = sum(&text, ROUTED, &["action=\"scrape\"", "route=\"local\""]);
        let forwarded = sum(&text, ROUTED, &["action=\"scrape\"", "route=\"forwarded\""]);
        (local + forwarded >= 2.0).then_some((local, forwarded))
    })
    .expect("both scrapes counted");
    assert_eq!((local, forwarded), (1.0, 1.0));
    let text = metrics_text(metrics);
    // The single-shard scrape was local on its owner, executor 3.
    let on_owner = sum(
        &text,
        ROUTED,
        &["action=\"scrape\"", "route=\"local\"", "executor=\"3\""],
    );
    assert_eq!(on_owner, 1.0);
}

/// Datagrams that are neither announce nor scrape: short junk (which a
/// length check must keep from piling onto socket 0), a cut announce, an
/// unknown action.
fn junk(rng: &mut SmallRng) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for len in [1usize, 7, 12, 15, 16, 35, 60, 97] {
        let mut d = vec![0u8; len];
        rng.fill(&mut d[..]);
        if len >= 12 {
            d[8..12].copy_from_slice(&1u32.to_be_bytes());
        }
        out.push(d);
    }
    let mut unknown = vec![0u8; 120];
    rng.fill(&mut unknown[..]);
    unknown[8..12].copy_from_slice(&9u32.to_be_bytes());
    out.push(unknown);
    out
}

const BAD_REQUEST: [&str; 2] = ["protocol=\"udp\"", "kind=\"bad_request\""];
const CONNECTS: [&str; 2] = ["protocol=\"udp\"", "action=\"connect\""];

#[test]
fn connects_and_junk_spread_over_unpinned_executors() {
    let workers = 4;
    let sources = 64;
    let tracker = Tracker::start("udp-steering-junk", &config(workers, true));
    let mut rng = SmallRng::seed_from_u64(3);
    let mut sent = 0;
    for _ in 0..sources {
        // A connect, then junk, from each of many source ports.
        let _client = Client::new(tracker.udp_v4());
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for d in junk(&mut rng) {
            socket.send_to(&d, tracker.udp_v4()).expect("send");
            sent += 1;
        }
    }
    let metrics = tracker.metrics.expect("metrics");
    let (bad, connects) = eventually(Duration::from_secs(10), || {
        let text = metrics_text(metrics);
        let bad = per_executor(&text, "aquatic_errors_total", &BAD_REQUEST, workers);
        let connects = per_executor(&text, "aquatic_requests_total", &CONNECTS, workers);
        (bad.iter().sum::<f64>() >= sent as f64 && connects.iter().sum::<f64>() >= sources as f64)
            .then_some((bad, connects))
    })
    .expect("every datagram counted");
    // Unpinned, the program asks for the kernel's hash of the source: 64
    // sources leave no executor out (all but certainly: 4 × (3/4)^64).
    assert!(bad.iter().all(|&n| n > 0.0), "junk per executor: {bad:?}");
    assert!(
        connects.iter().all(|&n| n > 0.0),
        "connects per executor: {connects:?}"
    );
}

/// CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t filled by sched_getaffinity for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Runs `f` on a thread pinned to `cpu`.
fn on_cpu<T: Send>(cpu: usize, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: as in allowed_cpus; the set names one allowed CPU.
                unsafe {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    assert_eq!(
                        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                        0,
                        "pin to cpu {cpu}"
                    );
                }
                f()
            })
            .join()
            .expect("pinned thread")
    })
}

/// On loopback the receive path runs on the sender's CPU: a connect sent
/// from CPU first_core + i reaches executor i, pinned there.
#[test]
fn pinned_connects_and_junk_go_to_the_receiving_cpus_executor() {
    let workers = 2;
    let cpus = allowed_cpus();
    let first_core = cpus
        .iter()
        .copied()
        .find(|c| cpus.contains(&(c + 1)))
        .expect("this test needs two consecutive CPUs to pin two executors to");
    let config = config(workers, true).replace(
        "pin_cpus = false\n",
        &format!("pin_cpus = true\nfirst_core = {first_core}\n"),
    );
    let tracker = Tracker::start("udp-steering-pinned", &config);
    let metrics = tracker.metrics.expect("metrics");
    let mut rng = SmallRng::seed_from_u64(4);
    let per_round = 10;
    for executor in 0..workers {
        let address = tracker.udp_v4();
        let datagrams: Vec<Vec<u8>> = (0..per_round).flat_map(|_| junk(&mut rng)).collect();
        let junk_sent = datagrams.len();
        let before = metrics_text(metrics);
        let bad_before = per_executor(&before, "aquatic_errors_total", &BAD_REQUEST, workers);
        let connects_before = per_executor(&before, "aquatic_requests_total", &CONNECTS, workers);
        on_cpu(first_core + executor, || {
            for _ in 0..per_round {
                let _ = Client::new(address);
            }
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
            for d in &datagrams {
                socket.send_to(d, address).expect("send");
            }
        });
        let (bad, connects) = eventually(Duration::from_secs(10), || {
            let text = metrics_text(metrics);
            let bad = per_executor(&text, "aquatic_errors_total", &BAD_REQUEST, workers);
            let connects = per_executor(&text, "aquatic_requests_total", &CONNECTS, workers);
            let delta = |now: &[f64], then: &[f64]| -> Vec<f64> {
                now.iter().zip(then).map(|(a, b)| a - b).collect()
            };
            let bad = delta(&bad, &bad_before);
            let connects = delta(&connects, &connects_before);
            (bad.iter().sum::<f64>() >= junk_sent as f64
                && connects.iter().sum::<f64>() >= per_round as f64)
                .then_some((bad, connects))
        })
        .expect("every datagram counted");
        for other in (0..workers).filter(|&o| o != executor) {
            assert_eq!(
                bad[other], 0.0,
                "junk from cpu of executor {executor}: {bad:?}"
            );
            assert_eq!(
                connects[other], 0.0,
                "connects from cpu of executor {executor}: {connects:?}"
            );
        }
    }
}

#[test]
fn every_socket_reports_its_kernel_drops() {
    let workers = 2;
    let tracker = Tracker::start("udp-steering-drops", &config(workers, true));
    let _client = Client::new(tracker.udp_v4());
    let metrics = tracker.metrics.expect("metrics");
    let text = eventually(Duration::from_secs(10), || {
        let text = metrics_text(metrics);
        text.contains("aquatic_udp_kernel_drops_total{executor=\"1\"}")
            .then_some(text)
    })
    .expect("drops published");
    for i in 0..workers {
        let line = format!("aquatic_udp_kernel_drops_total{{executor=\"{i}\"}} 0");
        assert!(text.contains(&line), "{line} in:\n{text}");
    }
}

/// A seccomp filter that refuses `setsockopt(…, SO_ATTACH_REUSEPORT_CBPF, …)`
/// with EPERM and allows everything else, as a sandbox might.
fn refuse_steering_program() -> Vec<libc::sock_filter> {
    #[cfg(target_arch = "x86_64")]
    const AUDIT_ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const AUDIT_ARCH: u32 = 0xc000_00b7;
    // struct seccomp_data: nr at 0, arch at 4, args[i] at 16 + 8 i; the
    // option name is args[2], whose low 32 bits come first on little endian.
    #[cfg(target_endian = "little")]
    const OPTNAME: u32 = 32;
    #[cfg(target_endian = "big")]
    const OPTNAME: u32 = 36;
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    vec![
        f(ld, 0, 0, 4),
        f(jeq, 0, 5, AUDIT_ARCH),
        f(ld, 0, 0, 0),
        f(jeq, 0, 3, libc::SYS_setsockopt as u32),
        f(ld, 0, 0, OPTNAME),
        f(jeq, 0, 1, libc::SO_ATTACH_REUSEPORT_CBPF as u32),
        f(ret, 0, 0, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        f(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Where the kernel refuses the program (here a seccomp filter), one line
/// says so and the tracker serves as without steering.
#[test]
fn a_refused_program_logs_one_line_and_serves_without_steering() {
    use std::os::unix::process::CommandExt;
    let workers = 2;
    let filter = refuse_steering_program();
    let mut command = common::binary();
    // SAFETY: between fork and exec only prctl(2), which is
    // async-signal-safe, on memory allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut tracker =
        Tracker::try_start_command("udp-steering-refused", &config(workers, true), command)
            .expect("starts without steering");
    announce_random_torrents(&tracker, 5);
    let (_, forwarded) = routed_announces(&tracker, workers, 2 * ANNOUNCES);
    assert!(
        forwarded.iter().sum::<f64>() > 0.0,
        "announces crossed the mesh"
    );
    assert_eq!(steering_gauge(&tracker), 0.0);
    let stderr = tracker.stderr_text();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("kernel steering"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("unavailable"), "{}", lines[0]);
}
