//! The ceiling for the UDP benchmark: a responder that does no tracker work.
//!
//! It answers BEP 15 connects and announces (with `PEERS` dummy IPv4 peers,
//! about what a real tracker hands out under aquatic_udp_load_test) and
//! scrapes (zeros), with one blocking `recvmmsg(MSG_WAITFORONE)` and one
//! `sendmmsg` per batch of up to 32 datagrams. No swarm, no connection-id
//! check, no runtime: whatever it costs per request is the kernel's share
//! that every tracker pays. `benches/compare.py --trackers null` runs it
//! beside the others.
//!
//! `cargo run --release -p aquatic --example udp_null_responder -- 127.0.0.1:3000`

use std::{
    io::Cursor,
    mem::zeroed,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

use aquatic_udp_protocol::{
    AnnounceResponse, ConnectResponse, ConnectionId, Request, Response, ResponsePeer,
    ScrapeResponse, TorrentScrapeStatistics,
};

const BATCH: usize = 32;
const SLOT: usize = 2048;
/// Peers per announce answer: the mean ours and opentracker hand out under
/// the load tester's 100 000 torrents and 200 000 peers.
const PEERS: usize = 22;

fn main() {
    let address: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(address)) => address,
        _ => {
            eprintln!("usage: udp_null_responder ADDRESS:PORT");
            std::process::exit(2);
        }
    };
    let socket = UdpSocket::bind(address).unwrap_or_else(|err| {
        eprintln!("bind {address}: {err}");
        std::process::exit(1);
    });
    let fd = socket.as_raw_fd();
    let mut incoming = vec![0u8; BATCH * SLOT];
    let mut outgoing = vec![0u8; BATCH * SLOT];
    // SAFETY (all zeroed values below): plain C structs for which all-zero
    // bytes are valid.
    let mut addrs: Vec<libc::sockaddr_storage> = vec![unsafe { zeroed() }; BATCH];
    let mut in_iov: Vec<libc::iovec> = vec![unsafe { zeroed() }; BATCH];
    let mut out_iov: Vec<libc::iovec> = vec![unsafe { zeroed() }; BATCH];
    let mut in_hdr: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; BATCH];
    let mut out_hdr: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; BATCH];
    let peers_v4 = vec![
        ResponsePeer {
            ip_address: std::net::Ipv4Addr::new(10, 0, 0, 1),
            port: 6881,
        };
        PEERS
    ];
    let zeros = vec![TorrentScrapeStatistics::default(); 74];
    loop {
        for i in 0..BATCH {
            in_iov[i] = libc::iovec {
                iov_base: incoming[i * SLOT..].as_mut_ptr().cast(),
                iov_len: SLOT,
            };
            in_hdr[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            in_hdr[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            in_hdr[i].msg_hdr.msg_iov = &mut in_iov[i];
            in_hdr[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at live buffers of the sizes given.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                in_hdr.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if got <= 0 {
            continue;
        }
        let mut replies = 0;
        for i in 0..got as usize {
            let bytes = &incoming[i * SLOT..i * SLOT + in_hdr[i].msg_len as usize];
            let response = match Request::parse(bytes, 74) {
                Ok(Request::Connect(r)) => Response::Connect(ConnectResponse {
                    transaction_id: r.transaction_id,
                    connection_id: ConnectionId(1),
                }),
                Ok(Request::Announce(r)) => Response::AnnounceIpv4(AnnounceResponse {
                    transaction_id: r.transaction_id,
                    announce_interval: 120,
                    leechers: 1,
                    seeders: 1,
                    peers: &peers_v4,
                }),
                Ok(Request::Scrape(r)) => Response::Scrape(ScrapeResponse {
                    transaction_id: r.transaction_id,
                    torrent_stats: &zeros[..r.info_hashes.len()],
                }),
                Err(_) => continue,
            };
            let slot = &mut outgoing[replies * SLOT..(replies + 1) * SLOT];
            let mut cursor = Cursor::new(&mut *slot);
            if response.write(&mut cursor).is_err() {
                continue;
            }
            let len = cursor.position() as usize;
            out_iov[replies] = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: len,
            };
            out_hdr[replies].msg_hdr.msg_name = in_hdr[i].msg_hdr.msg_name;
            out_hdr[replies].msg_hdr.msg_namelen = in_hdr[i].msg_hdr.msg_namelen;
            out_hdr[replies].msg_hdr.msg_iov = &mut out_iov[replies];
            out_hdr[replies].msg_hdr.msg_iovlen = 1;
            replies += 1;
        }
        let mut sent = 0;
        while sent < replies {
            // SAFETY: as for recvmmsg; the addresses are still in `addrs`.
            let n = unsafe {
                libc::sendmmsg(fd, out_hdr[sent..].as_mut_ptr(), (replies - sent) as u32, 0)
            };
            if n <= 0 {
                break;
            }
            sent += n as usize;
        }
    }
}
