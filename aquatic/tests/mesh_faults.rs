//! What clients see when executors cannot reach each other: a test hook
//! makes every executor stop reading its mesh channels.
//! Needs the `test-hooks` feature, which only tests enable.

mod common;

use std::{
    io::Write,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use common::{
    base_config, eventually, hash_on_shard,
    http_client::{percent, read_responses},
    metrics_client::errors,
    udp_client::Client,
    Tracker,
};

fn announce_request(hash: [u8; 20], peer: u8) -> Vec<u8> {
    format!(
        "GET /announce?info_hash={}&peer_id={}&port=6881&left=1 HTTP/1.1\r\nHost: t\r\n\r\n",
        percent(&hash),
        percent(&[peer; 20])
    )
    .into_bytes()
}

/// (status, failure reason if any) of `count` responses.
fn statuses_and_reasons(stream: &mut TcpStream, count: usize) -> Vec<(u16, Option<String>)> {
    read_responses(stream, count)
        .into_iter()
        .map(|(status, body)| {
            let reason = body
                .get(b"failure reason")
                .and_then(|v| v.as_bytes())
                .map(|r| String::from_utf8_lossy(r).into_owned());
            (status, reason)
        })
        .collect()
}

#[test]
fn a_full_mesh_channel_makes_http_announces_busy() {
    let config = base_config().replace("[runtime]\n", "[runtime]\nmesh_channel_size = 1\n")
        + "[metrics]\nenabled = true\naddress = \"127.0.0.1:0\"\n";
    let tracker = Tracker::start("mesh-full", &config);
    fire_hook(&tracker, "stall-mesh");

    // Four announces for each shard on one connection, answered one after
    // the other. The executor holding it answers its own shard's at once.
    // A receiving task already parked on its channel when the hook fired
    // still takes one more message before it stalls; one not yet polled
    // since start (a loaded machine may run it late) stalls before any.
    // So for the other shard's four, with the owner's task O and the
    // task that reads the owner's replies A:
    // - O parked, A parked: the first is answered; the second fills the
    //   one-slot channel and waits for its deadline; the rest find the
    //   channel full and are refused at once (1 deadline, 2 full);
    // - O not parked: the first fills the channel and waits; the other
    //   three are refused at once (1 deadline, 3 full);
    // - O parked, A not: the first is handled but its reply is never
    //   read, so it waits; the second goes into the channel O emptied and
    //   waits too; the last two are refused at once (2 deadlines, 2 full).
    let http = SocketAddr::from(([127, 0, 0, 1], tracker.http.expect("http").port()));
    let mut stream = TcpStream::connect(http).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut requests = Vec::new();
    for (i, shard) in [0, 0, 0, 0, 1, 1, 1, 1].into_iter().enumerate() {
        requests.extend(announce_request(hash_on_shard(shard, 2, 1), i as u8));
    }
    stream.write_all(&requests).expect("write");
    let responses = statuses_and_reasons(&mut stream, 8);
    let is_busy = |(status, reason): &(u16, Option<String>)| {
        *status == 503 && reason.as_deref() == Some("tracker busy, try again")
    };
    let is_answer = |(status, reason): &(u16, Option<String>)| *status == 200 && reason.is_none();
    let (first, second) = responses.split_at(4);
    let (local, remote) = if first.iter().all(is_answer) {
        (first, second)
    } else {
        (second, first)
    };
    assert!(local.iter().all(is_answer), "{responses:?}");
    let handled = remote.iter().take_while(|r| is_answer(r)).count();
    assert!(handled <= 1, "{responses:?}");
    assert!(remote[handled..].iter().all(is_busy), "{responses:?}");
    let busy = (remote.len() - handled) as f64;

    // Executors publish their counters once a second.
    let metrics = tracker.metrics.expect("metrics");
    let counted = eventually(Duration::from_secs(5), || {
        let full = errors(metrics, "kind=\"channel_full\"");
        let timeouts = errors(metrics, "kind=\"reply_timeout\"");
        (full + timeouts >= busy && timeouts >= 1.0).then_some((full, timeouts))
    });
    let (full, timeouts) =
        counted.expect("every busy answer counted as a full channel or a deadline");
    let outcome = (handled, timeouts as u64, full as u64);
    eprintln!("outcome {outcome:?}");
    assert!(
        [(1, 1, 2), (0, 1, 3), (0, 2, 2)].contains(&outcome),
        "(answered, deadlines, refused by the full channel) = {outcome:?}: \
         only requests sent into the channel wait for a deadline, the others are refused at once"
    );
}

/// Sends the hook datagram `aquatic-test-hook:NAME` and waits for the
/// tracker's acknowledgement: once it arrives, the hook has taken effect.
fn fire_hook(tracker: &Tracker, name: &str) {
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let trigger = format!("aquatic-test-hook:{name}");
    let mut reply = [0u8; 64];
    // Loopback rarely drops a datagram, but resend a few times rather than
    // hang the test on one lost datagram.
    for _ in 0..5 {
        udp.send_to(trigger.as_bytes(), tracker.udp_v4())
            .expect("send");
        if let Ok(n) = udp.recv(&mut reply) {
            assert_eq!(&reply[..n], b"aquatic-test-hook:ok", "hook acknowledgement");
            return;
        }
    }
    panic!("the tracker never acknowledged the {name} hook");
}

/// A WebSocket text frame as the npm client would send it.
fn ws_announce(hash: [u8; 20], peer: u8, stopped: bool) -> String {
    use aquatic_ws_protocol::{AnnounceEvent, AnnounceRequest, InMessage, InfoHash, PeerId};
    let request = AnnounceRequest {
        info_hash: InfoHash(hash),
        peer_id: PeerId([peer; 20]),
        event: if stopped {
            AnnounceEvent::Stopped
        } else {
            AnnounceEvent::Started
        },
        bytes_left: Some(10),
        numwant: Some(0),
        offers: None,
        answer: None,
        to_peer_id: None,
        offer_id: None,
    };
    let mut out = Vec::new();
    InMessage::Announce(request).write(&mut out).expect("write");
    String::from_utf8(out).expect("utf8")
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws_connect(addr: SocketAddr) -> Ws {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tungstenite::client(format!("ws://{addr}/"), stream)
        .expect("handshake")
        .0
}

fn ws_text(ws: &mut Ws) -> String {
    loop {
        match ws.read().expect("a message") {
            tungstenite::Message::Text(t) => return t.as_str().to_owned(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn ws_send(ws: &mut Ws, text: &str) {
    ws.send(tungstenite::Message::Text(text.to_owned().into()))
        .expect("send");
}

fn ws_leechers(addr: SocketAddr, hash: [u8; 20]) -> Option<u64> {
    let mut ws = ws_connect(addr);
    use aquatic_ws_protocol::{InMessage, InfoHash, ScrapeRequest};
    let mut scrape = Vec::new();
    InMessage::Scrape(ScrapeRequest {
        info_hashes: vec![InfoHash(hash)],
    })
    .write(&mut scrape)
    .expect("write");
    ws_send(&mut ws, &String::from_utf8(scrape).expect("utf8"));
    let text = ws_text(&mut ws);
    let reply: serde_json::Value = serde_json::from_str(&text).ok()?;
    let files = reply.get("files")?.as_object()?;
    files.values().next()?.get("incomplete")?.as_u64()
}

#[test]
fn a_stop_lost_to_a_full_mesh_still_leaves_the_peer_to_the_close() {
    let config = base_config().replace("[runtime]\n", "[runtime]\nmesh_channel_size = 1\n");
    let tracker = Tracker::start("mesh-lost-stop", &config);
    let ws_addr = SocketAddr::from(([127, 0, 0, 1], tracker.ws.expect("ws").port()));
    let mut client = ws_connect(ws_addr);
    ws_send(&mut client, "aquatic-test-hook:executor");
    let reply: serde_json::Value = serde_json::from_str(&ws_text(&mut client)).expect("json");
    let here = reply["test_hook_executor"].as_u64().expect("executor");
    let other = 1 - here;
    let torrent = hash_on_shard(other, 2, 50);
    ws_send(&mut client, &ws_announce(torrent, 1, false));
    assert!(ws_text(&mut client).contains("\"interval\""), "announced");

    fire_hook(&tracker, "stall-mesh");
    // Fill the one-slot channel to the owner (the first message after the
    // stall may still be read), then stop: the stop meets a full channel.
    for filler in 0..3 {
        ws_send(
            &mut client,
            &ws_announce(hash_on_shard(other, 2, 60 + filler), 1, false),
        );
    }
    ws_send(&mut client, &ws_announce(torrent, 1, true));
    std::thread::sleep(Duration::from_millis(200));
    drop(client);
    std::thread::sleep(Duration::from_millis(200));
    fire_hook(&tracker, "resume-mesh");

    // The close must still take the peer out of the owner's swarm.
    let left = eventually(Duration::from_secs(10), || {
        (ws_leechers(ws_addr, torrent) == Some(0)).then_some(())
    });
    assert!(left.is_some(), "the peer left with its connection");
}

#[test]
fn cross_shard_udp_scrapes_in_flight_are_bounded() {
    // UDP sources can be spoofed, so the bound is per executor: past
    // `udp.max_scrapes_in_flight` (256 by default) waiting cross-shard
    // scrapes, more are dropped and counted, without a reply.
    let config = base_config() + "[metrics]\nenabled = true\naddress = \"127.0.0.1:0\"\n";
    let tracker = Tracker::start("scrape-overload", &config);
    // Several sockets, so the kernel spreads them over both executors.
    let mut clients: Vec<Client> = (0..8).map(|_| Client::new(tracker.udp_v4())).collect();
    fire_hook(&tracker, "stall-mesh");

    // Every scrape names a hash of each shard, so whichever executor gets
    // it asks the other, which no longer reads its mesh: each waits for
    // its 5 s deadline. 1024 of them, four times the default bound.
    let hashes = [hash_on_shard(0, 2, 1), hash_on_shard(1, 2, 2)];
    for round in 0..128 {
        for client in clients.iter_mut() {
            let (_, bytes) = client.scrape_bytes(&hashes);
            client.send_raw(&bytes);
        }
        if round % 16 == 15 {
            // Room for the executors to drain their sockets.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let metrics = tracker.metrics.expect("metrics");
    let dropped = eventually(Duration::from_secs(4), || {
        let n = errors(metrics, "kind=\"scrape_overload\"");
        (n > 0.0).then_some(n)
    });
    let dropped = dropped.expect("scrapes past the bound are counted");
    // Those that waited get "busy" when their deadline passes: no more
    // than the bound on each executor (and one more, whose part the
    // stalling executor had already taken, freeing its slot early).
    let mut answered = 0;
    for client in &clients {
        client
            .socket
            .set_read_timeout(Some(Duration::from_secs(7)))
            .expect("timeout");
        while client.recv_raw().is_some() {
            answered += 1;
            // The rest arrive together with the first.
            client
                .socket
                .set_read_timeout(Some(Duration::from_millis(500)))
                .expect("timeout");
        }
    }
    eprintln!("{answered} scrapes answered, {dropped} dropped");
    assert!(
        answered > 0 && answered <= 2 * 256 + 2,
        "{answered} answered"
    );
    // Still serving.
    Client::new(tracker.udp_v4());
}
