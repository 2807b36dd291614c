//! BEP 15 end to end: the real binary, two workers, real UDP sockets.

mod common;

use std::time::Duration;

use aquatic_udp_protocol::{AnnounceEvent, ConnectionId, OwnedResponse};
use common::{
    base_config, eventually, hash_on_shard,
    udp_client::{counts, peers_v4, Client},
    Tracker,
};

#[test]
fn announce_scrape_stop_across_shards() {
    let tracker = Tracker::start("udp-flow", &base_config());
    // Hashes on both shards; the clients' sockets land on whichever
    // executor the kernel picks, so both the inline and the mesh paths run.
    let hashes = [
        hash_on_shard(0, 2, 1),
        hash_on_shard(1, 2, 2),
        hash_on_shard(1, 2, 3),
        hash_on_shard(0, 2, 4),
    ];
    let mut clients: Vec<Client> = (0..4).map(|_| Client::new(tracker.udp_v4())).collect();
    for (i, hash) in hashes.iter().enumerate() {
        let first = clients[i].announce(*hash, 1, 6001, AnnounceEvent::Started, 100);
        assert_eq!(
            peers_v4(&first),
            Vec::<u16>::new(),
            "first peer sees nobody"
        );
        assert_eq!(counts(&first), (0, 1));
        let second = clients[(i + 1) % 4].announce(*hash, 2, 6002, AnnounceEvent::Started, 0);
        assert_eq!(peers_v4(&second), vec![6001], "second peer sees the first");
        assert_eq!(counts(&second), (1, 1));
    }
    // Scrape order follows the request, whatever shard each hash lives on.
    let unknown = hash_on_shard(1, 2, 9);
    let order = [hashes[1], unknown, hashes[0], hashes[3], hashes[2]];
    for client in clients.iter_mut() {
        assert_eq!(
            client.scrape(&order),
            vec![(1, 1, 0), (0, 0, 0), (1, 1, 0), (1, 1, 0), (1, 1, 0)]
        );
    }
    // completed turns the leecher into a seeder and counts a download
    let done = clients[0].announce(hashes[0], 1, 6001, AnnounceEvent::Completed, 0);
    assert_eq!(counts(&done), (2, 0));
    assert_eq!(clients[2].scrape(&[hashes[0]]), vec![(2, 0, 1)]);
    // stopped removes the peer
    let stopped = clients[1].announce(hashes[1], 1, 6001, AnnounceEvent::Stopped, 100);
    assert_eq!(counts(&stopped), (1, 0));
    let third = clients[3].announce(hashes[1], 3, 6003, AnnounceEvent::Started, 100);
    assert_eq!(peers_v4(&third), vec![6002]);
}

#[test]
fn numwant_and_requester_exclusion() {
    let tracker = Tracker::start(
        "udp-numwant",
        &format!("{}[tracker]\nmax_numwant = 5\n", base_config()),
    );
    let hash = hash_on_shard(1, 2, 7);
    let mut client = Client::new(tracker.udp_v4());
    for peer in 0..10u8 {
        client.announce(hash, peer, 7000 + peer as u16, AnnounceEvent::Started, 10);
    }
    let response = client.announce(hash, 3, 7003, AnnounceEvent::None, 10);
    let ports = peers_v4(&response);
    assert_eq!(ports.len(), 5, "capped by max_numwant");
    assert!(!ports.contains(&7003), "never the requester");
}

#[test]
fn ipv6_announce_gets_ipv6_peers() {
    let tracker = Tracker::start("udp-v6", &base_config());
    let hash = hash_on_shard(0, 2, 5);
    let mut a = Client::new(tracker.udp_v6());
    let mut b = Client::new(tracker.udp_v6());
    let mut c = Client::new(tracker.udp_v4());
    a.announce(hash, 1, 8001, AnnounceEvent::Started, 10);
    c.announce(hash, 3, 8003, AnnounceEvent::Started, 10);
    match b.announce(hash, 2, 8002, AnnounceEvent::Started, 10) {
        OwnedResponse::AnnounceIpv6 {
            peers,
            seeders,
            leechers,
            ..
        } => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].port, 8001);
            assert_eq!(peers[0].ip_address, std::net::Ipv6Addr::LOCALHOST);
            assert_eq!((seeders, leechers), (0, 3), "counts cover both families");
        }
        other => panic!("expected IPv6 announce response, got {other:?}"),
    }
}

#[test]
fn expired_peers_disappear() {
    let config = format!(
        "{}[tracker]\npeer_timeout_secs = 1\ncleaning_interval_secs = 1\n",
        base_config()
    );
    let tracker = Tracker::start("udp-expiry", &config);
    let hashes = [hash_on_shard(0, 2, 11), hash_on_shard(1, 2, 12)];
    let mut client = Client::new(tracker.udp_v4());
    for hash in hashes {
        client.announce(hash, 1, 9001, AnnounceEvent::Started, 10);
    }
    assert_eq!(client.scrape(&hashes), vec![(0, 1, 0), (0, 1, 0)]);
    let gone = eventually(Duration::from_secs(10), || {
        (client.scrape(&hashes) == vec![(0, 0, 0), (0, 0, 0)]).then_some(())
    });
    assert!(gone.is_some(), "peers should expire after the timeout");
}

#[test]
fn invalid_connection_id_refused() {
    let tracker = Tracker::start("udp-connid", &base_config());
    let mut client = Client::new(tracker.udp_v4());
    client.connection_id = ConnectionId(0x1234_5678);
    let response = client.announce(hash_on_shard(0, 2, 1), 1, 1, AnnounceEvent::Started, 1);
    match response {
        OwnedResponse::Error { message, .. } => {
            assert!(message.contains("connection"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // the refused announce created nothing
    let mut fresh = Client::new(tracker.udp_v4());
    assert_eq!(fresh.scrape(&[hash_on_shard(0, 2, 1)]), vec![(0, 0, 0)]);
}

#[test]
fn garbage_does_not_kill_it_and_never_amplifies() {
    let tracker = Tracker::start("udp-garbage", &base_config());
    let client = Client::new(tracker.udp_v4());
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut datagrams: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0xff; 15],
        vec![0xff; 16],
        vec![0; 3000], // larger than any request
        [&[0u8; 8][..], &7i32.to_be_bytes(), &1i32.to_be_bytes()].concat(), // unknown action
        [
            &[0u8; 8][..],
            &1i32.to_be_bytes(),
            &1i32.to_be_bytes(),
            &[1; 10],
        ]
        .concat(), // short announce
        [
            &[0u8; 8][..],
            &2i32.to_be_bytes(),
            &1i32.to_be_bytes(),
            &[1; 13],
        ]
        .concat(), // ragged scrape
    ];
    for _ in 0..500 {
        let len = (next() % 200) as usize;
        datagrams.push((0..len).map(|_| next() as u8).collect());
    }
    for d in &datagrams {
        client.send_raw(d);
    }
    // Whatever came back is never larger than what provoked it.
    client
        .socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    while let Some(reply) = client.recv_raw() {
        assert!(reply.len() <= 98, "reply of {} bytes", reply.len());
    }
    client
        .socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    // still serving
    let mut fresh = Client::new(tracker.udp_v4());
    let r = fresh.announce(hash_on_shard(1, 2, 42), 1, 1234, AnnounceEvent::Started, 5);
    assert_eq!(counts(&r), (0, 1));
}

#[test]
fn port_zero_is_refused_and_negative_left_is_a_leecher() {
    let tracker = Tracker::start("udp-validation", &base_config());
    let mut client = Client::new(tracker.udp_v4());
    for shard in 0..2 {
        let hash = hash_on_shard(shard, 2, 30);
        // Port 0: nobody could connect to the peer; refused as over HTTP.
        match client.announce(hash, 1, 0, AnnounceEvent::Started, 10) {
            OwnedResponse::Error { message, .. } => assert_eq!(message, "invalid port"),
            other => panic!("shard {shard}: expected an error, got {other:?}"),
        }
        // A negative `left` says nothing true: a leecher, not a seeder.
        let reply = client.announce(hash, 2, 6881, AnnounceEvent::Started, -1);
        assert_eq!(counts(&reply), (0, 1), "shard {shard}: (seeders, leechers)");
        assert_eq!(client.scrape(&[hash]), vec![(0, 1, 0)], "shard {shard}");
    }
}

#[test]
fn a_seeder_is_sent_leechers_only_and_nobody_when_there_are_none() {
    let tracker = Tracker::start("udp-seeders", &base_config());
    let mut client = Client::new(tracker.udp_v4());
    for shard in 0..2 {
        let hash = hash_on_shard(shard, 2, 31);
        client.announce(hash, 1, 7001, AnnounceEvent::Started, 0);
        let second = client.announce(hash, 2, 7002, AnnounceEvent::Started, 0);
        assert_eq!(counts(&second), (2, 0));
        assert_eq!(
            peers_v4(&second),
            Vec::<u16>::new(),
            "shard {shard}: no seeder for a seeder"
        );
        client.announce(hash, 3, 7003, AnnounceEvent::Started, 5);
        let seeder = client.announce(hash, 1, 7001, AnnounceEvent::None, 0);
        assert_eq!(
            peers_v4(&seeder),
            vec![7003],
            "shard {shard}: the one leecher"
        );
    }
}

#[test]
fn ipv4_announce_replies_fit_a_1500_byte_link() {
    // A reply of 250 IPv4 peers is 20 + 6 × 250 = 1520 bytes, past the
    // 1472 an IPv4 datagram may carry on a 1500-byte link. Loopback's MTU
    // would let it through, so the cap is checked by counting peers here
    // (tests/udp_mtu.rs sends it over a real 1500-byte link).
    let config = format!("{}[tracker]\nmax_numwant = 300\n", base_config());
    let tracker = Tracker::start("udp-cap-v4", &config);
    let hash = hash_on_shard(1, 2, 21);
    let mut client = Client::new(tracker.udp_v4());
    client.fill_swarm(hash, 320);
    let reply = client.announce_wanting(hash, 200, 9999, AnnounceEvent::Started, 10, 250);
    assert_eq!(
        peers_v4(&reply).len(),
        (1472 - 20) / 6,
        "capped to fit 1472 bytes"
    );
    assert_eq!(counts(&reply), (0, 321), "the counts stay whole");
    // Below the cap numwant is obeyed.
    let reply = client.announce_wanting(hash, 201, 9998, AnnounceEvent::Started, 10, 240);
    assert_eq!(peers_v4(&reply).len(), 240);
}

#[test]
fn ipv6_announce_replies_fit_a_1500_byte_link() {
    // IPv6's header is 20 bytes longer: 1452 bytes for the reply, so at
    // most (1452 - 20) / 18 = 79 peers of 18 bytes.
    let config = format!("{}[tracker]\nmax_numwant = 300\n", base_config());
    let tracker = Tracker::start("udp-cap-v6", &config);
    let hash = hash_on_shard(0, 2, 22);
    let mut client = Client::new(tracker.udp_v6());
    client.fill_swarm(hash, 100);
    match client.announce_wanting(hash, 200, 9999, AnnounceEvent::Started, 10, 250) {
        OwnedResponse::AnnounceIpv6 {
            peers, leechers, ..
        } => {
            assert_eq!(peers.len(), (1452 - 20) / 18, "capped to fit 1452 bytes");
            assert_eq!(leechers, 101);
        }
        other => panic!("expected an IPv6 announce response, got {other:?}"),
    }
}
