//! Kernel steering of UDP datagrams: a classic BPF program on the
//! SO_REUSEPORT group hands each announce and scrape to the socket of the
//! executor that owns its torrent, so it never crosses the mesh.
//!
//! Every executor has its own socket on the shared address. Without a
//! program the kernel picks one by a hash of the source address, and with
//! N executors an announce lands on its owner 1 time in N; the other times
//! the router forwards it. With `SO_ATTACH_REUSEPORT_CBPF` the kernel runs
//! [`program`] on the UDP payload of every datagram and delivers it to
//! socket number *return value* of the group:
//!
//! ```text
//!   payload length < 36 ──────────────────────────────┐
//!   action (bytes 8..12) == 2, scrape ──┐              │
//!   action == 1, announce, length ≥ 98 ─┴─> u32 BE of bytes 16..20 % N
//!   anything else (connect, junk) ─────────────────────┴─> receiving CPU − first_core
//!                                                          (pinned), or u32::MAX
//! ```
//!
//! - Bytes 16..20 are the first 4 bytes of the (first) info hash in both an
//!   announce and a scrape, and `u32 big endian % N` is exactly
//!   [`aquatic_common::shard_of`]: the kernel's choice and the router's
//!   agree by construction (the unit tests run the program against it).
//! - The length is checked before any load: a classic BPF load past the
//!   end of the packet ends the program with 0, which would pile short junk
//!   onto executor 0.
//! - A connect (and anything that is not an announce or scrape) goes to the
//!   executor pinned to the CPU that received it, which keeps it on one
//!   core. An index past the group (a CPU outside the executors', or every
//!   datagram when executors are not pinned) makes the kernel fall back to
//!   its own hash: the only out-of-range index returned, on purpose.
//!
//! **The index of a socket is the order in which it was bound** (UDP joins
//! the group in `bind`). The sockets are bound in executor order and handed
//! to executor i in that order; a mismatch would send every datagram to the
//! wrong executor and the mesh would hide it (a test binds a group and checks
//! which socket receives what). Closing a socket moves the group's last
//! socket into its slot, so the program is detached before the executors
//! close their sockets on stop ([`Steering::detach`]).

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
};

use socket2::Socket;

/// Payload offset of the action (BEP 15: after the 8-byte connection id).
const ACTION_OFFSET: u32 = 8;
/// Payload offset of the (first) info hash of an announce or a scrape.
const INFO_HASH_OFFSET: u32 = 16;
/// BEP 15 action of an announce.
const ACTION_ANNOUNCE: u32 = 1;
/// BEP 15 action of a scrape.
const ACTION_SCRAPE: u32 = 2;
/// The shortest announce BEP 15 allows.
const ANNOUNCE_LEN: u32 = 98;
/// The shortest scrape: its head and one info hash.
const SCRAPE_LEN: u32 = INFO_HASH_OFFSET + 20;
/// An index past any group: the kernel picks by its hash instead.
const KERNEL_HASH: u32 = u32::MAX;

/// Where the executors run, which decides where connects go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuPlacement {
    /// Executor i is pinned to CPU `first_core + i`.
    Pinned {
        /// The CPU of executor 0.
        first_core: u32,
    },
    /// The executors float: the receiving CPU says nothing about them.
    Unpinned,
}

// Classic BPF opcodes used here (linux/filter.h), spelled out once.
const LD_LEN: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16;
const LD_ABS_W: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const MOD_K: u16 = (libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K) as u16;
const SUB_K: u16 = (libc::BPF_ALU | libc::BPF_SUB | libc::BPF_K) as u16;
const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// The ancillary "load" of the current CPU's number.
const CPU_ANCILLARY: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A conditional jump: `jt` / `jf` instructions are skipped past the next.
fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The steering program for a group of `executors` sockets (at least 2).
pub fn program(executors: u32, placement: CpuPlacement) -> Vec<libc::sock_filter> {
    // Index:   instruction                              comment
    let mut p = vec![
        /* 0 */ stmt(LD_LEN, 0), // A = payload length
        /* 1 */ jump(JGE_K, SCRAPE_LEN, 0, 8), // shorter than any scrape: by CPU (10)
        /* 2 */ stmt(LD_ABS_W, ACTION_OFFSET), // A = action (in bounds: length >= 36)
        /* 3 */ jump(JEQ_K, ACTION_SCRAPE, 3, 0), // scrape: by its first hash (7)
        /* 4 */ jump(JEQ_K, ACTION_ANNOUNCE, 0, 5), // neither: by CPU (10)
        /* 5 */ stmt(LD_LEN, 0),
        /* 6 */ jump(JGE_K, ANNOUNCE_LEN, 0, 3), // a short announce: by CPU (10)
        /* 7 */
        stmt(LD_ABS_W, INFO_HASH_OFFSET), // A = u32 BE of the hash's first 4 bytes
        /* 8 */ stmt(MOD_K, executors), // A = shard_of(hash, executors)
        /* 9 */ stmt(RET_A, 0),
    ];
    // 10: by the receiving CPU.
    match placement {
        CpuPlacement::Pinned { first_core } => p.extend([
            stmt(LD_ABS_W, CPU_ANCILLARY), // A = this CPU's number
            // A CPU below first_core wraps to a huge index: kernel hash.
            stmt(SUB_K, first_core),
            stmt(RET_A, 0),
        ]),
        CpuPlacement::Unpinned => p.push(stmt(RET_K, KERNEL_HASH)),
    }
    p
}

fn set_socket_option<T>(fd: RawFd, option: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live T of the size passed; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn attach_program(fd: RawFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel only reads the instructions.
        filter: program.as_ptr().cast_mut(),
    };
    set_socket_option(fd, libc::SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

/// The program attached to a group, and a handle to detach it.
#[derive(Debug)]
pub struct Steering {
    /// A duplicate of one socket of the group, for the stop: the group
    /// outlives any single executor's socket until then.
    handle: Socket,
}

impl Steering {
    /// Attaches the steering program to the group of `sockets`, which must
    /// all be bound, in executor order (socket i for executor i).
    pub fn attach(sockets: &[Socket], placement: CpuPlacement) -> io::Result<Self> {
        let Some(first) = sockets.first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no socket"));
        };
        let executors = u32::try_from(sockets.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many sockets"))?;
        if executors < 2 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "one socket: nothing to steer",
            ));
        }
        attach_program(first.as_raw_fd(), &program(executors, placement))?;
        Ok(Self {
            handle: first.try_clone()?,
        })
    }

    /// Removes the program from the group, before the executors close
    /// their sockets (which reorders the group): the kernel spreads by its
    /// hash again. Kernels before 5.3 have no detach; there a program that
    /// always asks for the hash does the same.
    pub fn detach(self) -> io::Result<()> {
        let fd = self.handle.as_raw_fd();
        let unused: libc::c_int = 0;
        match set_socket_option(fd, libc::SO_DETACH_REUSEPORT_BPF, &unused) {
            Err(err) if err.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                attach_program(fd, &[stmt(RET_K, KERNEL_HASH)])
            }
            other => other,
        }
    }
}

/// Datagrams the kernel dropped for this socket (a full receive buffer,
/// mostly): the socket's `sk_drops`, the counter `SO_RXQ_OVFL` reports, read
/// with `SO_MEMINFO` (Linux 4.12) so that the request path carries no
/// control messages for it.
pub fn kernel_drops(fd: RawFd) -> io::Result<u64> {
    let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` has room for `len` bytes; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(info[libc::SK_MEMINFO_DROPS as usize]))
}

#[cfg(test)]
mod tests {
    use std::{
        net::{SocketAddr, UdpSocket},
        time::Duration,
    };

    use aquatic_common::{shard_of, InfoHash};
    use rand::{rngs::SmallRng, Rng, SeedableRng};
    use socket2::{Domain, Protocol, Type};

    use super::*;

    /// Why a program run failed: what the kernel's interpreter would do
    /// differently (an out-of-bounds load ends the program with 0).
    #[derive(Debug, PartialEq, Eq)]
    enum Fault {
        OutOfBounds,
        Unknown(u16),
        FellOffTheEnd,
    }

    /// A classic BPF interpreter for the opcodes [`program`] uses.
    fn run(program: &[libc::sock_filter], packet: &[u8], cpu: u32) -> Result<u32, Fault> {
        let mut a: u32 = 0;
        let mut pc = 0;
        while let Some(i) = program.get(pc) {
            pc += 1;
            match i.code {
                LD_LEN => a = packet.len() as u32,
                LD_ABS_W if i.k == CPU_ANCILLARY => a = cpu,
                LD_ABS_W => {
                    let at = i.k as usize;
                    let word = packet.get(at..at + 4).ok_or(Fault::OutOfBounds)?;
                    a = u32::from_be_bytes(word.try_into().map_err(|_| Fault::OutOfBounds)?);
                }
                MOD_K => a %= i.k,
                SUB_K => a = a.wrapping_sub(i.k),
                JGE_K | JEQ_K => {
                    let taken = if i.code == JGE_K { a >= i.k } else { a == i.k };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                RET_A => return Ok(a),
                RET_K => return Ok(i.k),
                other => return Err(Fault::Unknown(other)),
            }
        }
        Err(Fault::FellOffTheEnd)
    }

    fn announce(hash: &[u8; 20]) -> Vec<u8> {
        let mut d = vec![0u8; ANNOUNCE_LEN as usize];
        d[..8].copy_from_slice(&0x0417_2710_1980i64.to_be_bytes());
        d[8..12].copy_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
        d[12..16].copy_from_slice(&7u32.to_be_bytes());
        d[16..36].copy_from_slice(hash);
        d
    }

    fn scrape(hashes: &[[u8; 20]]) -> Vec<u8> {
        let mut d = vec![0u8; 16];
        d[8..12].copy_from_slice(&ACTION_SCRAPE.to_be_bytes());
        for h in hashes {
            d.extend_from_slice(h);
        }
        d
    }

    const PLACEMENTS: [CpuPlacement; 3] = [
        CpuPlacement::Unpinned,
        CpuPlacement::Pinned { first_core: 0 },
        CpuPlacement::Pinned { first_core: 4 },
    ];

    #[test]
    fn announces_and_scrapes_go_to_shard_of() {
        let mut rng = SmallRng::seed_from_u64(20);
        for executors in [2u32, 3, 4, 7, 16, 64] {
            for placement in PLACEMENTS {
                let p = program(executors, placement);
                for _ in 0..2000 {
                    let mut hash = [0u8; 20];
                    rng.fill(&mut hash[..]);
                    let owner = shard_of(&InfoHash(hash), executors as usize).0 as u32;
                    let cpu = rng.gen_range(0..128);
                    // BEP 41 options make announces longer.
                    let mut a = announce(&hash);
                    assert_eq!(run(&p, &a, cpu), Ok(owner));
                    a.extend_from_slice(&[2, 5, b'/', b'a', b'n', b'n', 1]);
                    assert_eq!(run(&p, &a, cpu), Ok(owner));
                    let mut others = vec![hash];
                    for _ in 0..rng.gen_range(0..73) {
                        let mut h = [0u8; 20];
                        rng.fill(&mut h[..]);
                        others.push(h);
                    }
                    assert_eq!(run(&p, &scrape(&others), cpu), Ok(owner));
                }
            }
        }
    }

    /// The index a datagram that is neither announce nor scrape gets.
    fn by_cpu(placement: CpuPlacement, cpu: u32) -> u32 {
        match placement {
            CpuPlacement::Pinned { first_core } => cpu.wrapping_sub(first_core),
            CpuPlacement::Unpinned => KERNEL_HASH,
        }
    }

    #[test]
    fn connects_and_junk_go_by_cpu_and_never_load_out_of_bounds() {
        let mut rng = SmallRng::seed_from_u64(21);
        for placement in PLACEMENTS {
            let p = program(4, placement);
            for cpu in 0..12 {
                let expected = by_cpu(placement, cpu);
                // A connect: 16 bytes, action 0.
                let mut connect = vec![0u8; 16];
                connect[..8].copy_from_slice(&0x41727101980u64.to_be_bytes());
                assert_eq!(run(&p, &connect, cpu), Ok(expected));
                for len in 0..ANNOUNCE_LEN as usize {
                    let mut junk = vec![0u8; len];
                    rng.fill(&mut junk[..]);
                    if len < SCRAPE_LEN as usize || junk[8..12] != ACTION_SCRAPE.to_be_bytes() {
                        assert_eq!(run(&p, &junk, cpu), Ok(expected), "{len} random bytes");
                    }
                    // An announce cut short.
                    if len >= 12 {
                        junk[8..12].copy_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
                        assert_eq!(run(&p, &junk, cpu), Ok(expected), "short announce of {len}");
                    }
                }
                for action in [0u32, 3, 0x0100_0000, u32::MAX] {
                    let mut other = vec![0u8; 200];
                    rng.fill(&mut other[..]);
                    other[8..12].copy_from_slice(&action.to_be_bytes());
                    assert_eq!(run(&p, &other, cpu), Ok(expected), "action {action}");
                }
            }
        }
    }

    #[test]
    fn pinned_cpus_outside_the_executors_fall_back_to_the_kernel_hash() {
        let p = program(2, CpuPlacement::Pinned { first_core: 4 });
        let connect = [0u8; 16];
        for (cpu, index) in [(4, 0), (5, 1)] {
            assert_eq!(run(&p, &connect, cpu), Ok(index));
        }
        for cpu in [0, 3, 6, 100] {
            let index = run(&p, &connect, cpu).expect("runs");
            assert!(index >= 2, "cpu {cpu} gave index {index}");
        }
    }

    /// A reuseport group of `n` UDP sockets on one loopback port, bound in
    /// order.
    fn group(n: usize) -> (SocketAddr, Vec<Socket>) {
        // A plain socket picks a port no other reuseport group uses.
        let probe = UdpSocket::bind("127.0.0.1:0").expect("probe");
        let address = probe.local_addr().expect("address");
        drop(probe);
        let sockets = (0..n)
            .map(|_| {
                let s =
                    Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
                s.set_reuse_port(true).expect("SO_REUSEPORT");
                s.set_read_timeout(Some(Duration::from_millis(500)))
                    .expect("timeout");
                s.bind(&address.into()).expect("bind");
                s
            })
            .collect();
        (address, sockets)
    }

    fn received(socket: &Socket) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [std::mem::MaybeUninit::new(0u8); 256];
        while let Ok(n) = socket.recv(&mut buf) {
            // SAFETY: recv initialised the first n bytes.
            out.push(
                buf[..n]
                    .iter()
                    .map(|b| unsafe { b.assume_init() })
                    .collect(),
            );
        }
        out
    }

    /// Against the kernel: the socket index is the order of binding, and the
    /// kernel computes what `shard_of` does.
    #[test]
    fn the_kernel_delivers_to_the_owner_in_binding_order() {
        let executors = 3;
        let (address, sockets) = group(executors);
        let steering = Steering::attach(&sockets, CpuPlacement::Unpinned).expect("attach");
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        let mut rng = SmallRng::seed_from_u64(22);
        let mut sent = vec![Vec::new(); executors];
        for _ in 0..60 {
            let mut hash = [0u8; 20];
            rng.fill(&mut hash[..]);
            let d = announce(&hash);
            client.send_to(&d, address).expect("send");
            sent[shard_of(&InfoHash(hash), executors).0].push(d);
        }
        for (i, socket) in sockets.iter().enumerate() {
            assert_eq!(received(socket), sent[i], "socket {i}");
        }
        assert_eq!(kernel_drops(sockets[0].as_raw_fd()).expect("SO_MEMINFO"), 0);
        // Detached, one source's datagrams all go to one socket again.
        steering.detach().expect("detach");
        for _ in 0..30 {
            let mut hash = [0u8; 20];
            rng.fill(&mut hash[..]);
            client.send_to(&announce(&hash), address).expect("send");
        }
        let counts: Vec<usize> = sockets.iter().map(|s| received(s).len()).collect();
        assert_eq!(counts.iter().sum::<usize>(), 30);
        assert_eq!(counts.iter().filter(|&&n| n > 0).count(), 1, "{counts:?}");
    }

    #[test]
    fn kernel_drops_counts_what_a_full_receive_buffer_refused() {
        let (address, sockets) = group(1);
        let socket = &sockets[0];
        // The kernel raises this to its minimum: a few datagrams' room.
        socket.set_recv_buffer_size(1).expect("SO_RCVBUF");
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        let sent = 200;
        for _ in 0..sent {
            client.send_to(&[0x5a; 100], address).expect("send");
        }
        let fd = socket.as_raw_fd();
        let drops = kernel_drops(fd).expect("SO_MEMINFO");
        let queued = received(socket).len() as u64;
        assert!(drops > 0, "{queued} queued, no drop");
        assert_eq!(drops + queued, sent);
    }

    #[test]
    fn a_single_socket_is_not_steered() {
        let (_, sockets) = group(1);
        assert!(Steering::attach(&sockets, CpuPlacement::Unpinned).is_err());
    }
}
