//! Swarm snapshots and the state directory: what lets a restart keep the
//! UDP and HTTP swarms and the connection ids clients hold.
//!
//! ```text
//!  state dir/                  ([snapshot] dir, else $STATE_DIRECTORY)
//!    lock                      flock'd while a process uses the directory
//!    connection-id.key         32 random bytes, 0600, made on first start
//!    swarms-<i>.snapshot       executor i's BitTorrent swarms
//!    swarms-<i>.snapshot.rejected   the last file that could not be read
//!    private-accounting.snapshot    private mode, written at a clean stop and
//!                                   consumed (removed) by the next start
//!
//!  file   = header (48 bytes, fixed layout) || body
//!  header = magic "AQTSNAP\0" || version u16 LE || 0u16 || created_at u32 LE
//!           (Unix seconds) || records u64 LE || body_len u64 LE
//!           || SipHash-2-4-128 of header[..32] || body (16 bytes)
//!  body   = `records` bincode TorrentRecords, one after the other
//! ```
//!
//! The header is laid out by hand, not by bincode, so that the version can
//! be read before the layout it names is known. A peer is stored with its
//! age since its last announce in seconds, and the file with its wall-clock
//! creation time, so that a restore (maybe after downtime, certainly in a
//! process whose monotonic clock starts again at zero) knows how old each
//! peer is. A file is written to a temporary name, fsynced, renamed and the
//! directory fsynced: a crash mid-write leaves the previous snapshot.
//!
//! Reading is all or nothing per file: a file whose magic, version,
//! length, checksum or records are wrong contributes nothing, is moved
//! aside (one rejected file kept per executor file, replaced by the next)
//! and logged in one line. Restored torrents are re-sharded with the
//! current `shard_of` and worker count; the file's executor index only
//! names the file.
//!
//! Peers are stored as the compact swarms hold them (issue 18): a 63-bit
//! hash of the peer id under the process's [`PeerIdKey`], and the full id
//! only for peers the shard keeps it for (HTTP). The key is derived from
//! the `connection-id.key` material (domain-separated, see
//! [`PeerIdKey::from_material`]), so it is the same in every shard and
//! after a restart: a restored peer matches its next announce whichever
//! shard now owns its torrent. Format version 1 stored the full id of
//! every peer; its ids are hashed with the current key when it is read.
//!
//! Private mode's accounting has a file of its own, with the same header
//! (magic "AQTACCT\0", its own version) and `records` bincode
//! [`AccountingRecord`]s: each private peer's last reported counters (its
//! baseline) and the deltas the database thread could not write before
//! the stop, each batch with the sequence number it may already have been
//! committed under. Only a clean stop writes it, after the last flush, and
//! the next start removes it as it reads it: a baseline from a periodic
//! snapshot, or one used once already, could credit a member twice for
//! what was flushed since (after a crash, a member's first announce
//! credits nothing instead, as without a state directory).
//!
//! The checksum is SipHash-2-4-128 from `siphasher`, already a dependency
//! (connection ids): no new crate for what a CRC would do no better.

use std::{
    fs::{self, File, OpenOptions},
    hash::Hasher,
    io::{self, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use aquatic_common::{
    connection_id::{ConnectionIdKey, MIN_KEY_BYTES},
    shard_of,
    time::{SecondsSinceStart, UnixSeconds, ValidUntil},
    InfoHash, PeerId,
};
use bincode::{Decode, Encode};
use siphasher::sip128::{Hasher128, SipHasher24};

use crate::{
    codec,
    swarm::{
        private::{BaselineEntry, Batch, TorrentId, Transfer, UserId},
        BtPeerEntry, PeerIdKey,
    },
};

/// The first bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"AQTSNAP\0";
/// The format this build writes.
pub const FORMAT_VERSION: u16 = 3;
/// The formats this build reads, each with its body reader: the current
/// one and (once there is one) the previous, so that an upgrade, the main
/// reason to restart, keeps the swarms. A new version adds its row and
/// keeps the old row, converting to the current records.
const READERS: &[(u16, BodyReader)] = &[(1, read_body_v1), (2, read_body_v2), (3, read_body_v3)];

/// Bytes of the fixed header.
pub const HEADER_BYTES: usize = 48;
/// Bytes of the header the checksum covers before the body.
const CHECKED_HEADER_BYTES: usize = 32;
/// Peers in one record at most: a torrent with more is split into
/// several records, so that no record comes near the codec's decode limit.
const RECORD_MAX_PEERS: usize = 16_384;
/// The largest body accepted: a length field beyond it is corruption.
const MAX_BODY_BYTES: u64 = 16 << 30;

const LOCK_FILE: &str = "lock";
const KEY_FILE: &str = "connection-id.key";
const SNAPSHOT_PREFIX: &str = "swarms-";
const SNAPSHOT_SUFFIX: &str = ".snapshot";
const REJECTED_SUFFIX: &str = ".rejected";
const TEMP_SUFFIX: &str = ".tmp";
const ACCOUNTING_FILE: &str = "private-accounting.snapshot";

/// The first bytes of the private accounting file.
pub const ACCOUNTING_MAGIC: [u8; 8] = *b"AQTACCT\0";
/// The accounting format this build writes (and the only one it reads).
pub const ACCOUNTING_VERSION: u16 = 1;
/// Baselines or deltas in one accounting record at most.
const ACCOUNTING_RECORD_ITEMS: usize = 16_384;

type BodyReader = fn(&[u8], u64, &PeerIdKey) -> Result<Vec<TorrentRecord>, SnapshotError>;

/// An IP address as a snapshot stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub enum IpRecord {
    /// IPv4.
    V4([u8; 4]),
    /// IPv6.
    V6([u8; 16]),
}

/// One UDP or HTTP peer in a snapshot (format versions 2 and 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PeerRecord {
    /// Where the peer is.
    pub ip: IpRecord,
    /// The port it listens on.
    pub port: u16,
    /// The 63-bit hash of its id under the process's [`PeerIdKey`].
    pub peer_id_hash: u64,
    /// Its full id, where the shard kept it (HTTP peers).
    pub peer_id: Option<[u8; 20]>,
    /// Seeding (else leeching).
    pub seeder: bool,
    /// Seconds since its last announce, when the snapshot was taken.
    pub age_secs: u32,
}

/// One peer in a format version 1 snapshot: the full id of every peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct PeerRecordV1 {
    /// Where the peer is.
    pub ip: IpRecord,
    /// The port it listens on.
    pub port: u16,
    /// Its id.
    pub peer_id: [u8; 20],
    /// Seeding (else leeching).
    pub seeder: bool,
    /// Seconds since its last announce, when the snapshot was taken.
    pub age_secs: u32,
}

/// Peers of one torrent in a format version 1 snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct TorrentRecordV1 {
    /// The torrent.
    pub info_hash: [u8; 20],
    /// Its `completed` count.
    pub completed: u32,
    /// Its peers.
    pub peers: Vec<PeerRecordV1>,
}

impl TorrentRecordV1 {
    /// The current record: ids hashed with `key`. The full ids are kept
    /// (version 1 knew every peer's; each is released when its peer stops
    /// or expires, within one peer timeout).
    fn upgrade(self, key: &PeerIdKey) -> TorrentRecord {
        TorrentRecord {
            info_hash: self.info_hash,
            completed: self.completed,
            private_torrent: None,
            peers: self
                .peers
                .into_iter()
                .map(|p| PeerRecord {
                    ip: p.ip,
                    port: p.port,
                    peer_id_hash: key.hash(&PeerId(p.peer_id)),
                    peer_id: Some(p.peer_id),
                    seeder: p.seeder,
                    age_secs: p.age_secs,
                })
                .collect(),
        }
    }
}

/// Peers of one torrent in a format version 2 snapshot (public swarms
/// only: version 2 did not keep the private tracker's).
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct TorrentRecordV2 {
    /// The torrent.
    pub info_hash: [u8; 20],
    /// Its `completed` count (the scrape's "downloaded").
    pub completed: u32,
    /// Its peers.
    pub peers: Vec<PeerRecord>,
}

impl From<TorrentRecordV2> for TorrentRecord {
    fn from(old: TorrentRecordV2) -> Self {
        Self {
            info_hash: old.info_hash,
            completed: old.completed,
            private_torrent: None,
            peers: old.peers,
        }
    }
}

/// Peers of one torrent in a snapshot (format version 3). A torrent with
/// many peers spans several records with the same info hash.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct TorrentRecord {
    /// The torrent.
    pub info_hash: [u8; 20],
    /// Its `completed` count (the scrape's "downloaded").
    pub completed: u32,
    /// Set for a swarm of the private tracker: the torrent's id in the
    /// database (the private swarms are apart from the public ones, and
    /// their seeders and leechers are written back under this id).
    pub private_torrent: Option<u32>,
    /// Its peers.
    pub peers: Vec<PeerRecord>,
}

/// A [`TorrentRecord`] borrowing its peers, to encode a slice of a
/// shard's peers without copying them again.
#[derive(Encode)]
struct TorrentRecordRef<'a> {
    info_hash: [u8; 20],
    completed: u32,
    private_torrent: Option<u32>,
    peers: &'a [PeerRecord],
}

impl PeerRecord {
    /// The record of a peer held at `now` by a shard whose peers expire
    /// `peer_timeout` after their last announce.
    pub fn from_entry(entry: &BtPeerEntry, now: SecondsSinceStart, peer_timeout: Duration) -> Self {
        let timeout = secs_u32(peer_timeout);
        let left = entry.valid_until.0 .0.saturating_sub(now.0);
        Self {
            ip: match entry.ip {
                IpAddr::V4(ip) => IpRecord::V4(ip.octets()),
                IpAddr::V6(ip) => IpRecord::V6(ip.octets()),
            },
            port: entry.port,
            peer_id_hash: entry.peer_id_hash,
            peer_id: entry.peer_id.map(|id| id.0),
            seeder: entry.seeder,
            age_secs: timeout.saturating_sub(left),
        }
    }

    /// The peer again, at `now` in a process whose peers expire after
    /// `peer_timeout`; `None` once it is that old.
    pub fn to_entry(&self, now: SecondsSinceStart, peer_timeout: Duration) -> Option<BtPeerEntry> {
        let left = secs_u32(peer_timeout).checked_sub(self.age_secs)?;
        if left == 0 {
            return None;
        }
        Some(BtPeerEntry {
            peer_id_hash: self.peer_id_hash,
            peer_id: self.peer_id.map(PeerId),
            ip: match self.ip {
                IpRecord::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
                IpRecord::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
            },
            port: self.port,
            seeder: self.seeder,
            valid_until: ValidUntil(SecondsSinceStart(now.0.saturating_add(left))),
        })
    }
}

fn secs_u32(d: Duration) -> u32 {
    d.as_secs().min(u32::MAX as u64) as u32
}

/// Why a snapshot file was not used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// It could not be read or written.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Shorter than its header or than the body its header announces.
    #[error("truncated: {got} bytes, expected {expected}")]
    Truncated {
        /// Bytes there.
        got: u64,
        /// Bytes the header (or the header alone) needs.
        expected: u64,
    },
    /// Not a snapshot of ours.
    #[error("not an aquatic snapshot (wrong magic bytes)")]
    Foreign,
    /// Written by a newer aquatic.
    #[error("format version {0} is newer than this build reads")]
    Newer(u16),
    /// Written by an aquatic too old to be read.
    #[error("format version {0} is no longer read")]
    Older(u16),
    /// Longer than its header says.
    #[error("{0} bytes after the body")]
    TrailingBytes(u64),
    /// The bytes are not what was written.
    #[error("checksum mismatch")]
    Checksum,
    /// A record does not decode.
    #[error("record {index}: {source}")]
    Record {
        /// Which record.
        index: u64,
        /// Why.
        source: codec::CodecError,
    },
    /// The body holds another number of records than the header says.
    #[error("the body holds {got} records, the header says {expected}")]
    RecordCount {
        /// Records found.
        got: u64,
        /// Records announced.
        expected: u64,
    },
}

/// A snapshot body being built: records encoded as they come, so that an
/// executor can build it in slices between requests. Each slice encodes
/// into a buffer of its own ([`start_chunk`](Self::start_chunk)): the body
/// is never one growing buffer that the executor reallocates (copying all
/// of it, tens of megabytes at a million peers) in the middle of a slice.
/// The buffers are written one after the other, and freed, off the
/// executor.
#[derive(Debug, Default)]
pub struct SnapshotBody {
    chunks: Vec<Vec<u8>>,
    records: u64,
    peers: u64,
}

impl SnapshotBody {
    /// Starts a new buffer of `capacity` bytes for the next records.
    pub fn start_chunk(&mut self, capacity: usize) {
        if self.chunks.last().is_some_and(|c| c.is_empty()) {
            return;
        }
        self.chunks.push(Vec::with_capacity(capacity));
    }

    /// Appends peers of one torrent (all of them, or a part: the parts of
    /// one torrent are records of their own, merged again on restore),
    /// split into records of at most [`RECORD_MAX_PEERS`] peers. Nothing
    /// is written for no peers.
    pub fn push_torrent(
        &mut self,
        info_hash: InfoHash,
        completed: u32,
        private_torrent: Option<u32>,
        peers: &[PeerRecord],
    ) -> Result<(), codec::CodecError> {
        if self.chunks.is_empty() {
            self.chunks.push(Vec::new());
        }
        let Some(out) = self.chunks.last_mut() else {
            return Ok(());
        };
        for part in peers.chunks(RECORD_MAX_PEERS) {
            let record = TorrentRecordRef {
                info_hash: info_hash.0,
                completed,
                private_torrent,
                peers: part,
            };
            codec::encode_into(&record, out)?;
            self.records += 1;
            self.peers += part.len() as u64;
        }
        Ok(())
    }

    /// Peers in the body.
    pub fn peers(&self) -> u64 {
        self.peers
    }

    fn len(&self) -> u64 {
        self.chunks.iter().map(|c| c.len() as u64).sum()
    }

    /// The header for this body.
    fn header(&self, created_at: UnixSeconds) -> [u8; HEADER_BYTES] {
        header_bytes(
            &MAGIC,
            FORMAT_VERSION,
            created_at,
            self.records,
            self.len(),
            self.chunks.iter().map(Vec::as_slice),
        )
    }

    /// Writes the whole file, header and body, to `out`.
    pub fn write_to(&self, created_at: UnixSeconds, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.header(created_at))?;
        for chunk in &self.chunks {
            out.write_all(chunk)?;
        }
        Ok(())
    }

    /// Writes the whole file to `file`, freeing each buffer once written;
    /// with `pace`, see [`StateDir::write_snapshot_body`].
    fn write_paced(
        self,
        created_at: UnixSeconds,
        file: &mut File,
        pace: Option<Duration>,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        file.write_all(&self.header(created_at))?;
        let mut offset = HEADER_BYTES as u64;
        for chunk in self.chunks {
            file.write_all(&chunk)?;
            let len = chunk.len() as u64;
            drop(chunk);
            if let Some(pace) = pace {
                // SAFETY: sync_file_range(2) on a descriptor we own; it
                // only starts writeback of the range (the fsync at the end
                // is what makes the file durable), so a failure is ignored.
                unsafe {
                    libc::sync_file_range(
                        file.as_raw_fd(),
                        offset as libc::off64_t,
                        len as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
                std::thread::sleep(pace);
            }
            offset += len;
        }
        Ok(())
    }

    /// The whole file: header and body.
    pub fn into_file(self, created_at: UnixSeconds) -> Vec<u8> {
        let mut file = Vec::with_capacity(HEADER_BYTES + self.len() as usize);
        // Writing into a Vec cannot fail.
        let _ = self.write_to(created_at, &mut file);
        file
    }
}

/// The header of a file of `version` whose body is `body`, in parts.
fn header_bytes<'a>(
    magic: &[u8; 8],
    version: u16,
    created_at: UnixSeconds,
    records: u64,
    body_len: u64,
    body: impl Iterator<Item = &'a [u8]>,
) -> [u8; HEADER_BYTES] {
    let mut header = [0u8; HEADER_BYTES];
    header[..8].copy_from_slice(magic);
    header[8..10].copy_from_slice(&version.to_le_bytes());
    header[12..16].copy_from_slice(&created_at.0.to_le_bytes());
    header[16..24].copy_from_slice(&records.to_le_bytes());
    header[24..32].copy_from_slice(&body_len.to_le_bytes());
    let sum = checksum(&header[..CHECKED_HEADER_BYTES], body);
    header[32..].copy_from_slice(&sum);
    header
}

/// A file of `version` around an already encoded body (tests write
/// older versions with it).
#[cfg(test)]
fn file_bytes(version: u16, created_at: UnixSeconds, records: u64, body: &[u8]) -> Vec<u8> {
    let header = header_bytes(
        &MAGIC,
        version,
        created_at,
        records,
        body.len() as u64,
        std::iter::once(body),
    );
    let mut file = Vec::with_capacity(HEADER_BYTES + body.len());
    file.extend_from_slice(&header);
    file.extend_from_slice(body);
    file
}

/// SipHash-2-4-128 of the header's first bytes and the body, which may
/// come in parts (the hash is of their concatenation).
fn checksum<'a>(header: &[u8], body: impl Iterator<Item = &'a [u8]>) -> [u8; 16] {
    let mut h = SipHasher24::new_with_keys(0x6171_7561_7469_6373, 0x736e_6170_7368_6f74);
    h.write(header);
    for part in body {
        h.write(part);
    }
    h.finish128().as_bytes()
}

/// What a snapshot file holds.
#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotContents {
    /// When it was written (wall clock).
    pub created_at: UnixSeconds,
    /// Its records.
    pub records: Vec<TorrentRecord>,
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

/// Reads a whole snapshot file's bytes: every check passes or nothing
/// comes out. Peer ids of an older format are hashed with `key`.
pub fn parse(bytes: &[u8], key: &PeerIdKey) -> Result<SnapshotContents, SnapshotError> {
    let frame = check_frame(bytes, &MAGIC, FORMAT_VERSION, |version| {
        READERS.iter().any(|(v, _)| *v == version)
    })?;
    let Some((_, reader)) = READERS.iter().find(|(v, _)| *v == frame.version) else {
        return Err(SnapshotError::Older(frame.version));
    };
    Ok(SnapshotContents {
        created_at: frame.created_at,
        records: reader(frame.body, frame.records, key)?,
    })
}

/// A file's header fields and its checked body.
struct Frame<'a> {
    version: u16,
    created_at: UnixSeconds,
    records: u64,
    body: &'a [u8],
}

/// Checks magic, version (`reads` says which are read, `current` is the
/// newest), lengths and checksum of a file laid out as the module says.
fn check_frame<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    current: u16,
    reads: impl Fn(u16) -> bool,
) -> Result<Frame<'a>, SnapshotError> {
    let got = bytes.len() as u64;
    if bytes.len() < HEADER_BYTES {
        // Too short to hold a header: a file of ours cut short, or not ours.
        if !bytes.is_empty() && !magic.starts_with(&bytes[..bytes.len().min(magic.len())]) {
            return Err(SnapshotError::Foreign);
        }
        return Err(SnapshotError::Truncated {
            got,
            expected: HEADER_BYTES as u64,
        });
    }
    if bytes[..8] != magic[..] {
        return Err(SnapshotError::Foreign);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    let created_at = UnixSeconds(u32::from_le_bytes([
        bytes[12], bytes[13], bytes[14], bytes[15],
    ]));
    let records = le_u64(&bytes[16..24]);
    let body_len = le_u64(&bytes[24..32]);
    if !reads(version) {
        return Err(if version > current {
            SnapshotError::Newer(version)
        } else {
            SnapshotError::Older(version)
        });
    }
    let expected = (HEADER_BYTES as u64).saturating_add(body_len.min(MAX_BODY_BYTES));
    if got < expected || body_len > MAX_BODY_BYTES {
        return Err(SnapshotError::Truncated { got, expected });
    }
    if got > expected {
        return Err(SnapshotError::TrailingBytes(got - expected));
    }
    let body = &bytes[HEADER_BYTES..];
    if checksum(&bytes[..CHECKED_HEADER_BYTES], std::iter::once(body))[..] != bytes[32..48] {
        return Err(SnapshotError::Checksum);
    }
    Ok(Frame {
        version,
        created_at,
        records,
        body,
    })
}

/// Format version 1: `records` [`TorrentRecordV1`]s back to back, each
/// peer with its full id, which is hashed with the current key.
fn read_body_v1(
    body: &[u8],
    records: u64,
    key: &PeerIdKey,
) -> Result<Vec<TorrentRecord>, SnapshotError> {
    let old: Vec<TorrentRecordV1> = read_records(body, records)?;
    Ok(old.into_iter().map(|r| r.upgrade(key)).collect())
}

/// Format version 2: `records` [`TorrentRecordV2`]s back to back (no
/// private swarms).
fn read_body_v2(
    body: &[u8],
    records: u64,
    _key: &PeerIdKey,
) -> Result<Vec<TorrentRecord>, SnapshotError> {
    let old: Vec<TorrentRecordV2> = read_records(body, records)?;
    Ok(old.into_iter().map(TorrentRecord::from).collect())
}

/// Format version 3: `records` [`TorrentRecord`]s back to back.
fn read_body_v3(
    body: &[u8],
    records: u64,
    _key: &PeerIdKey,
) -> Result<Vec<TorrentRecord>, SnapshotError> {
    read_records(body, records)
}

/// `records` bincode records of type `T` back to back, all of the body.
fn read_records<T: Decode<()>>(body: &[u8], records: u64) -> Result<Vec<T>, SnapshotError> {
    // A record takes at least 22 bytes: a count beyond that is corruption
    // (and must not size an allocation).
    if records > body.len() as u64 / 22 + 1 {
        return Err(SnapshotError::RecordCount {
            got: 0,
            expected: records,
        });
    }
    let mut out = Vec::with_capacity(records as usize);
    let mut at = 0;
    let mut index = 0u64;
    while at < body.len() {
        let (record, used): (T, usize) = codec::decode_prefix(&body[at..])
            .map_err(|source| SnapshotError::Record { index, source })?;
        out.push(record);
        at += used;
        index += 1;
    }
    if index != records {
        return Err(SnapshotError::RecordCount {
            got: index,
            expected: records,
        });
    }
    Ok(out)
}

/// Why the state directory cannot be used: each is a start-up error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateDirError {
    /// The directory or its lock file cannot be made or opened.
    #[error("cannot use the state directory {}: {source}", .path.display())]
    Open {
        /// The path concerned.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process holds the lock.
    #[error("the state directory {} is in use by another aquatic process (it holds {}); give each process its own snapshot.dir", .dir.display(), .dir.join(LOCK_FILE).display())]
    InUse {
        /// The directory.
        dir: PathBuf,
    },
    /// The connection-id key file cannot be read or made.
    #[error("connection-id key file {}: {source}", .path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The connection-id key file is too short to be a key.
    #[error("connection-id key file {} is {got} bytes, not {MIN_KEY_BYTES} or more: delete it to make a new key (UDP clients then connect again)", .path.display())]
    KeyTooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        got: usize,
    },
}

/// The state directory, locked for as long as this value lives.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    /// Held open: the flock lives as long as the descriptor.
    _lock: File,
    /// Executors that wrote their file since start; once all have, files
    /// of executors beyond the current count (an earlier run with more
    /// workers) have been absorbed and are removed.
    written: Mutex<Vec<bool>>,
}

impl StateDir {
    /// Creates (0700) and locks `path` for a process of `workers` executors.
    pub fn open(path: &Path, workers: usize) -> Result<Self, StateDirError> {
        let open_error = |path: &Path| {
            let path = path.to_owned();
            move |source| StateDirError::Open { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(open_error(path))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(open_error(&lock_path))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                StateDirError::InUse {
                    dir: path.to_owned(),
                }
            } else {
                StateDirError::Open {
                    path: lock_path,
                    source: err,
                }
            });
        }
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
            written: Mutex::new(vec![false; workers]),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Executor `executor`'s snapshot file.
    pub fn snapshot_path(&self, executor: usize) -> PathBuf {
        self.path
            .join(format!("{SNAPSHOT_PREFIX}{executor}{SNAPSHOT_SUFFIX}"))
    }

    /// Writes executor `executor`'s snapshot: temporary file, fsync,
    /// rename, fsync of the directory. Returns the file's size.
    pub fn write_snapshot(&self, executor: usize, file: &[u8]) -> io::Result<u64> {
        let path = self.snapshot_path(executor);
        write_durably(&path, file, 0o600)?;
        self.note_written(executor);
        Ok(file.len() as u64)
    }

    /// Writes executor `executor`'s snapshot from a body built in slices,
    /// like [`write_snapshot`](Self::write_snapshot). Returns the size.
    ///
    /// With `pace`, each buffer is handed to writeback as soon as it is
    /// written (`sync_file_range`), freed, and followed by a pause of
    /// `pace`: the kernel's work (copying, writeback, unmapping) comes in
    /// small steps instead of one long fsync, which a kernel without
    /// preemption would not interrupt for an executor sharing the core.
    pub fn write_snapshot_body(
        &self,
        executor: usize,
        body: SnapshotBody,
        created_at: UnixSeconds,
        pace: Option<Duration>,
    ) -> io::Result<u64> {
        let path = self.snapshot_path(executor);
        let size = HEADER_BYTES as u64 + body.len();
        write_durably_with(&path, 0o600, |file| {
            body.write_paced(created_at, file, pace)
        })?;
        self.note_written(executor);
        Ok(size)
    }

    fn note_written(&self, executor: usize) {
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = written.get_mut(executor) else {
            return;
        };
        let first = !*slot;
        *slot = true;
        if first && written.iter().all(|w| *w) {
            let workers = written.len();
            drop(written);
            for (index, path) in self.snapshot_files() {
                if index >= workers {
                    match fs::remove_file(&path) {
                        Ok(()) => log::info!(
                            "removed {}: its swarms are in the files of the {workers} executors now",
                            path.display()
                        ),
                        Err(err) => log::warn!("cannot remove {}: {err}", path.display()),
                    }
                }
            }
        }
    }

    /// Every `swarms-<i>.snapshot` in the directory, by executor index.
    fn snapshot_files(&self) -> Vec<(usize, PathBuf)> {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return Vec::new();
        };
        let mut files: Vec<(usize, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let index = name
                    .to_str()?
                    .strip_prefix(SNAPSHOT_PREFIX)?
                    .strip_suffix(SNAPSHOT_SUFFIX)?
                    .parse()
                    .ok()?;
                Some((index, e.path()))
            })
            .collect();
        files.sort();
        files
    }

    /// Reads every snapshot file and deals its torrents out to `shards`
    /// shards by the current `shard_of`, keeping only peers younger than
    /// `peer_timeout` at `now`. A file that cannot be used is logged,
    /// moved aside and skipped whole.
    /// Ids in a version 1 file are hashed with `key`.
    pub fn restore(
        &self,
        shards: usize,
        now: UnixSeconds,
        peer_timeout: Duration,
        key: &PeerIdKey,
    ) -> Restored {
        let mut restored = Restored {
            per_shard: (0..shards).map(|_| Vec::new()).collect(),
            ..Restored::default()
        };
        let timeout = secs_u32(peer_timeout);
        for (_, path) in self.snapshot_files() {
            let contents = fs::read(&path)
                .map_err(SnapshotError::from)
                .and_then(|bytes| parse(&bytes, key));
            let contents = match contents {
                Ok(contents) => contents,
                Err(err) => {
                    let aside = reject(&path);
                    log::warn!(
                        "snapshot {} is unusable ({err}): its swarms start empty; {aside}",
                        path.display()
                    );
                    restored.rejected_files += 1;
                    continue;
                }
            };
            restored.files += 1;
            // A clock set back since the snapshot: take no time as passed.
            let elapsed = now.0.saturating_sub(contents.created_at.0);
            restored.oldest_secs = restored.oldest_secs.max(elapsed);
            for mut record in contents.records {
                let before = record.peers.len();
                record.peers.retain_mut(|p| {
                    p.age_secs = p.age_secs.saturating_add(elapsed);
                    p.age_secs < timeout
                });
                restored.expired += (before - record.peers.len()) as u64;
                if record.peers.is_empty() {
                    continue;
                }
                restored.peers += record.peers.len() as u64;
                let shard = shard_of(&InfoHash(record.info_hash), shards);
                restored.per_shard[shard.0].push(record);
            }
        }
        restored
    }

    /// The private accounting file.
    pub fn accounting_path(&self) -> PathBuf {
        self.path.join(ACCOUNTING_FILE)
    }

    /// Writes the private accounting of a clean stop (temporary file,
    /// fsync, rename, fsync of the directory); returns its size.
    pub fn write_accounting(
        &self,
        accounting: &Accounting,
        created_at: UnixSeconds,
    ) -> Result<u64, SnapshotError> {
        let file = accounting
            .to_file(created_at)
            .map_err(|source| SnapshotError::Record { index: 0, source })?;
        write_durably(&self.accounting_path(), &file, 0o600)?;
        Ok(file.len() as u64)
    }

    /// Reads and removes the accounting file of the last clean stop: its
    /// baselines dealt out to `shards` shards (those older than
    /// `peer_timeout` at `now` dropped) and its deltas. `None` without a
    /// file; a file that cannot be used is logged and moved aside, and
    /// one that cannot be removed is not used (a later start would use
    /// it again).
    pub fn take_accounting(
        &self,
        shards: usize,
        now: UnixSeconds,
        peer_timeout: Duration,
    ) -> Option<RestoredAccounting> {
        let path = self.accounting_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => {
                log::warn!("private accounting {} is unreadable: {err}", path.display());
                return None;
            }
        };
        let (accounting, created_at) = match Accounting::parse(&bytes) {
            Ok(parsed) => parsed,
            Err(err) => {
                let aside = reject(&path);
                log::warn!(
                    "private accounting {} is unusable ({err}): members' next announces credit \
                     nothing; {aside}",
                    path.display()
                );
                return None;
            }
        };
        if let Err(err) = fs::remove_file(&path).and_then(|()| File::open(&self.path)?.sync_all()) {
            log::error!(
                "cannot remove {} ({err}): not used, so that no later start uses it again",
                path.display()
            );
            return None;
        }
        let mut restored = RestoredAccounting {
            per_shard: (0..shards).map(|_| Vec::new()).collect(),
            in_flight: accounting.in_flight,
            pending: accounting.pending,
            ..RestoredAccounting::default()
        };
        let elapsed = now.0.saturating_sub(created_at.0);
        let timeout = secs_u32(peer_timeout);
        for mut baseline in accounting.baselines {
            baseline.age_secs = baseline.age_secs.saturating_add(elapsed);
            if baseline.age_secs >= timeout {
                restored.expired += 1;
                continue;
            }
            restored.baselines += 1;
            let shard = shard_of(&InfoHash(baseline.info_hash), shards);
            restored.per_shard[shard.0].push(baseline);
        }
        Some(restored)
    }

    /// The connection-id key kept in the directory: read, or made (0600)
    /// on first start.
    pub fn connection_id_key(&self) -> Result<ConnectionIdKey, StateDirError> {
        let (path, material) = self.key_material()?;
        ConnectionIdKey::from_material(&material).map_err(|short| StateDirError::KeyTooShort {
            path,
            got: short.got,
        })
    }

    /// The peer-id key, derived from the same material (domain-separated):
    /// one key for every shard, the same after a restart.
    pub fn peer_id_key(&self) -> Result<PeerIdKey, StateDirError> {
        let (path, material) = self.key_material()?;
        if material.len() < MIN_KEY_BYTES {
            return Err(StateDirError::KeyTooShort {
                path,
                got: material.len(),
            });
        }
        Ok(PeerIdKey::from_material(&material))
    }

    /// The key file's path and bytes, the file made on first start.
    fn key_material(&self) -> Result<(PathBuf, Vec<u8>), StateDirError> {
        let path = self.path.join(KEY_FILE);
        let key_error = |source| StateDirError::Key {
            path: path.clone(),
            source,
        };
        let material = match fs::read(&path) {
            Ok(material) => material,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let material = ConnectionIdKey::random_material();
                write_durably(&path, &material, 0o600).map_err(key_error)?;
                log::info!("made a new connection-id key in {}", path.display());
                material.to_vec()
            }
            Err(err) => return Err(key_error(err)),
        };
        Ok((path, material))
    }
}

/// Moves an unusable snapshot aside (replacing the one kept before) and
/// says where it went, for the log line.
fn reject(path: &Path) -> String {
    let mut aside = path.as_os_str().to_owned();
    aside.push(REJECTED_SUFFIX);
    let aside = PathBuf::from(aside);
    match fs::rename(path, &aside) {
        Ok(()) => format!("kept as {} for inspection", aside.display()),
        Err(err) => format!("could not move it to {}: {err}", aside.display()),
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or
/// the new one whole: a temporary file, fsynced, renamed over `path`, and
/// the directory fsynced so the rename itself is on disk.
fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_durably_with(path, mode, |file| file.write_all(bytes))
}

/// [`write_durably`] of what `fill` writes.
fn write_durably_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(TEMP_SUFFIX);
    let temp = PathBuf::from(temp);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(&temp)?;
    fill(&mut file)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// What [`StateDir::restore`] found.
#[derive(Debug, Default)]
pub struct Restored {
    /// Records for each shard, by the current `shard_of`.
    pub per_shard: Vec<Vec<TorrentRecord>>,
    /// Peers restored.
    pub peers: u64,
    /// Peers dropped as older than the peer timeout.
    pub expired: u64,
    /// Files read.
    pub files: usize,
    /// Files that could not be used.
    pub rejected_files: usize,
    /// Age of the oldest file read, in seconds.
    pub oldest_secs: u32,
}

/// One private peer's baseline in the accounting file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct BaselineRecord {
    /// The torrent.
    pub info_hash: [u8; 20],
    /// The member's database id.
    pub user: u32,
    /// The member's client.
    pub peer_id: [u8; 20],
    /// `uploaded` as last sent.
    pub uploaded: u64,
    /// `downloaded` as last sent.
    pub downloaded: u64,
    /// The last announce said `left = 0`.
    pub seeding: bool,
    /// Seconds since that announce, when the file was written.
    pub age_secs: u32,
}

impl BaselineRecord {
    /// The record of a baseline held at `now` by a ledger whose peers are
    /// forgotten `peer_timeout` after their last announce.
    pub fn from_entry(
        entry: &BaselineEntry,
        now: SecondsSinceStart,
        peer_timeout: Duration,
    ) -> Self {
        let left = entry.valid_until.0 .0.saturating_sub(now.0);
        Self {
            info_hash: entry.info_hash.0,
            user: entry.user.0,
            peer_id: entry.peer_id.0,
            uploaded: entry.uploaded,
            downloaded: entry.downloaded,
            seeding: entry.seeding,
            age_secs: secs_u32(peer_timeout).saturating_sub(left),
        }
    }

    /// The baseline again at `now`; `None` once it is that old.
    pub fn to_entry(
        &self,
        now: SecondsSinceStart,
        peer_timeout: Duration,
    ) -> Option<BaselineEntry> {
        let left = secs_u32(peer_timeout).checked_sub(self.age_secs)?;
        if left == 0 {
            return None;
        }
        Some(BaselineEntry {
            info_hash: InfoHash(self.info_hash),
            user: UserId(self.user),
            peer_id: PeerId(self.peer_id),
            uploaded: self.uploaded,
            downloaded: self.downloaded,
            seeding: self.seeding,
            valid_until: ValidUntil(SecondsSinceStart(now.0.saturating_add(left))),
        })
    }
}

/// Credited bytes of one member on one torrent, in the accounting file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
pub struct TransferRecord {
    /// The member.
    pub user: u32,
    /// The torrent.
    pub torrent: u32,
    /// Bytes credited as uploaded.
    pub uploaded: u64,
    /// Bytes credited as downloaded.
    pub downloaded: u64,
    /// The address it last announced from.
    pub ip: IpRecord,
    /// The port it last announced.
    pub port: u16,
}

/// One record of the accounting file.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum AccountingRecord {
    /// Baselines (a part of them).
    Baselines(Vec<BaselineRecord>),
    /// Deltas not written (a part of one batch: the parts of a batch
    /// merge back into it). `sequence` is the number the database thread
    /// gave the batch and may have committed it under (then the next
    /// attempt finds it applied and does not apply it again); `None` for
    /// deltas never tried.
    Deltas {
        /// The batch's sequence number, if it was tried.
        sequence: Option<u64>,
        /// Credited bytes.
        transfers: Vec<TransferRecord>,
        /// Snatches: (user, torrent, times).
        snatches: Vec<(u32, u32, u32)>,
        /// Seeders and leechers: (torrent, seeders, leechers).
        counts: Vec<(u32, u32, u32)>,
    },
}

/// Private mode's accounting across a clean restart.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accounting {
    /// Every private peer's baseline (every executor's).
    pub baselines: Vec<BaselineRecord>,
    /// The batch the database thread was writing, with its number.
    pub in_flight: Option<(u64, Batch)>,
    /// Deltas not yet tried.
    pub pending: Batch,
}

impl Accounting {
    /// Nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.baselines.is_empty() && self.in_flight.is_none() && self.pending.is_empty()
    }

    /// Rows of deltas kept.
    pub fn rows(&self) -> usize {
        self.pending.rows() + self.in_flight.as_ref().map_or(0, |(_, b)| b.rows())
    }

    fn records(&self) -> Vec<AccountingRecord> {
        let mut records: Vec<AccountingRecord> = self
            .baselines
            .chunks(ACCOUNTING_RECORD_ITEMS)
            .map(|part| AccountingRecord::Baselines(part.to_vec()))
            .collect();
        let batches = self
            .in_flight
            .iter()
            .map(|(sequence, batch)| (Some(*sequence), batch))
            .chain(std::iter::once((None, &self.pending)));
        for (sequence, batch) in batches {
            let mut transfers: Vec<TransferRecord> = batch
                .transfers
                .iter()
                .map(|(&(user, torrent), t)| TransferRecord {
                    user: user.0,
                    torrent: torrent.0,
                    uploaded: t.uploaded,
                    downloaded: t.downloaded,
                    ip: ip_record(t.ip),
                    port: t.port,
                })
                .collect();
            transfers.sort_unstable_by_key(|t| (t.user, t.torrent));
            let mut snatches: Vec<(u32, u32, u32)> = batch
                .snatches
                .iter()
                .map(|(&(user, torrent), &n)| (user.0, torrent.0, n))
                .collect();
            snatches.sort_unstable();
            let mut counts: Vec<(u32, u32, u32)> = batch
                .counts
                .iter()
                .map(|(torrent, c)| (torrent.0, c.seeders as u32, c.leechers as u32))
                .collect();
            counts.sort_unstable();
            let parts = transfers
                .len()
                .max(snatches.len())
                .max(counts.len())
                .div_ceil(ACCOUNTING_RECORD_ITEMS)
                .max(usize::from(sequence.is_some()));
            let part = |v: &Vec<_>, i: usize| -> Vec<_> {
                v.iter()
                    .skip(i * ACCOUNTING_RECORD_ITEMS)
                    .take(ACCOUNTING_RECORD_ITEMS)
                    .copied()
                    .collect()
            };
            for i in 0..parts {
                records.push(AccountingRecord::Deltas {
                    sequence,
                    transfers: transfers
                        .iter()
                        .skip(i * ACCOUNTING_RECORD_ITEMS)
                        .take(ACCOUNTING_RECORD_ITEMS)
                        .copied()
                        .collect(),
                    snatches: part(&snatches, i),
                    counts: part(&counts, i),
                });
            }
        }
        records
    }

    fn from_records(records: Vec<AccountingRecord>) -> Self {
        let mut accounting = Self::default();
        for record in records {
            match record {
                AccountingRecord::Baselines(part) => accounting.baselines.extend(part),
                AccountingRecord::Deltas {
                    sequence,
                    transfers,
                    snatches,
                    counts,
                } => {
                    let mut batch = Batch::default();
                    for t in transfers {
                        batch.transfers.insert(
                            (UserId(t.user), TorrentId(t.torrent)),
                            Transfer {
                                uploaded: t.uploaded,
                                downloaded: t.downloaded,
                                ip: ip_addr(t.ip),
                                port: t.port,
                            },
                        );
                    }
                    for (user, torrent, n) in snatches {
                        batch.snatches.insert((UserId(user), TorrentId(torrent)), n);
                    }
                    for (torrent, seeders, leechers) in counts {
                        batch.counts.insert(
                            TorrentId(torrent),
                            aquatic_common::PeerCounts {
                                seeders: seeders as usize,
                                leechers: leechers as usize,
                            },
                        );
                    }
                    match sequence {
                        None => accounting.pending.merge(batch),
                        Some(sequence) => match &mut accounting.in_flight {
                            Some((s, in_flight)) if *s == sequence => in_flight.merge(batch),
                            // This build writes one batch in flight at
                            // most; a second number is not its file's
                            // (and merging it would risk a double count).
                            Some(_) => {}
                            None => accounting.in_flight = Some((sequence, batch)),
                        },
                    }
                }
            }
        }
        accounting
    }

    /// The file: header and records.
    pub fn to_file(&self, created_at: UnixSeconds) -> Result<Vec<u8>, codec::CodecError> {
        let records = self.records();
        let mut body = Vec::new();
        for record in &records {
            codec::encode_into(record, &mut body)?;
        }
        let header = header_bytes(
            &ACCOUNTING_MAGIC,
            ACCOUNTING_VERSION,
            created_at,
            records.len() as u64,
            body.len() as u64,
            std::iter::once(body.as_slice()),
        );
        let mut file = Vec::with_capacity(HEADER_BYTES + body.len());
        file.extend_from_slice(&header);
        file.extend_from_slice(&body);
        Ok(file)
    }

    /// Reads an accounting file: all or nothing. Returns it and when it
    /// was written.
    pub fn parse(bytes: &[u8]) -> Result<(Self, UnixSeconds), SnapshotError> {
        let frame = check_frame(bytes, &ACCOUNTING_MAGIC, ACCOUNTING_VERSION, |v| {
            v == ACCOUNTING_VERSION
        })?;
        let records = read_records(frame.body, frame.records)?;
        Ok((Self::from_records(records), frame.created_at))
    }
}

fn ip_record(ip: IpAddr) -> IpRecord {
    match ip {
        IpAddr::V4(ip) => IpRecord::V4(ip.octets()),
        IpAddr::V6(ip) => IpRecord::V6(ip.octets()),
    }
}

fn ip_addr(ip: IpRecord) -> IpAddr {
    match ip {
        IpRecord::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
        IpRecord::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
    }
}

/// What the last clean stop kept of private accounting, for this start.
#[derive(Debug, Default)]
pub struct RestoredAccounting {
    /// Baselines for each shard, by the current `shard_of`.
    pub per_shard: Vec<Vec<BaselineRecord>>,
    /// The batch the database thread was writing, with its number.
    pub in_flight: Option<(u64, Batch)>,
    /// Deltas not yet tried.
    pub pending: Batch,
    /// Baselines restored.
    pub baselines: u64,
    /// Baselines dropped as older than the peer timeout.
    pub expired: u64,
}

/// Restored torrents waiting for their executors. An executor's shard is
/// its place in the mesh, known only once it has joined (not its thread's
/// index), so each takes its own share after joining.
#[derive(Debug, Default)]
pub struct RestoredShards {
    torrents: Mutex<Vec<Vec<TorrentRecord>>>,
    baselines: Mutex<Vec<Vec<BaselineRecord>>>,
}

impl RestoredShards {
    /// Shares `per_shard` out.
    pub fn new(per_shard: Vec<Vec<TorrentRecord>>) -> Self {
        Self {
            torrents: Mutex::new(per_shard),
            baselines: Mutex::default(),
        }
    }

    /// With private baselines for each shard too.
    pub fn with_baselines(self, per_shard: Vec<Vec<BaselineRecord>>) -> Self {
        Self {
            baselines: Mutex::new(per_shard),
            ..self
        }
    }

    /// Shard `shard`'s torrents (empty the second time).
    pub fn take(&self, shard: usize) -> Vec<TorrentRecord> {
        take_share(&self.torrents, shard)
    }

    /// Shard `shard`'s private baselines (empty the second time).
    pub fn take_baselines(&self, shard: usize) -> Vec<BaselineRecord> {
        take_share(&self.baselines, shard)
    }
}

fn take_share<T>(shares: &Mutex<Vec<Vec<T>>>, shard: usize) -> Vec<T> {
    let mut shares = shares.lock().unwrap_or_else(|e| e.into_inner());
    shares
        .get_mut(shard)
        .map(std::mem::take)
        .unwrap_or_default()
}

/// Where the connection-id key comes from: the state directory when there
/// is one (ids survive a restart), else a random key (ids die with the
/// process). A cluster-wide key file goes in front of this.
pub fn connection_id_key(state: Option<&StateDir>) -> Result<ConnectionIdKey, StateDirError> {
    match state {
        Some(dir) => dir.connection_id_key(),
        None => Ok(ConnectionIdKey::random()),
    }
}

/// Where the peer-id key comes from: derived from the state directory's
/// key material when there is one (snapshot records stay valid across
/// restarts and re-sharding), else random.
pub fn peer_id_key(state: Option<&StateDir>) -> Result<PeerIdKey, StateDirError> {
    match state {
        Some(dir) => dir.peer_id_key(),
        None => Ok(PeerIdKey::random()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key tests hash peer ids with.
    const KEY: PeerIdKey = PeerIdKey([0x0123_4567, 0x89ab_cdef]);

    /// A format version 1 file, as the previous release wrote it.
    fn v1_file(created_at: u32, records: &[TorrentRecordV1]) -> Vec<u8> {
        let mut body = Vec::new();
        for record in records {
            codec::encode_into(record, &mut body).expect("encodes");
        }
        file_bytes(1, UnixSeconds(created_at), records.len() as u64, &body)
    }

    fn peer(n: u8, age: u32) -> PeerRecord {
        PeerRecord {
            ip: if n % 2 == 0 {
                IpRecord::V4([10, 0, 0, n])
            } else {
                IpRecord::V6([n; 16])
            },
            port: 1000 + n as u16,
            peer_id_hash: KEY.hash(&PeerId([n; 20])),
            // HTTP peers have their full id, UDP ones not.
            peer_id: (n % 2 == 0).then_some([n; 20]),
            seeder: n % 3 == 0,
            age_secs: age,
        }
    }

    fn sample_file(created_at: u32) -> Vec<u8> {
        let mut body = SnapshotBody::default();
        for t in 0..5u8 {
            let peers: Vec<PeerRecord> = (0..t * 3).map(|n| peer(n, 10 * n as u32)).collect();
            body.start_chunk(64);
            body.push_torrent(InfoHash([t; 20]), t as u32, None, &peers)
                .expect("encodes");
        }
        body.into_file(UnixSeconds(created_at))
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "aquatic-snapshot-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn round_trip() {
        let file = sample_file(1_700_000_000);
        let contents = parse(&file, &KEY).expect("parses");
        assert_eq!(contents.created_at, UnixSeconds(1_700_000_000));
        assert_eq!(contents.records.len(), 4, "the torrent without peers too");
        assert_eq!(contents.records[3].peers.len(), 12);
        assert_eq!(contents.records[3].peers[5], peer(5, 50));
    }

    #[test]
    fn big_torrents_are_split_into_records() {
        let mut body = SnapshotBody::default();
        let peers: Vec<PeerRecord> = (0..RECORD_MAX_PEERS + 5)
            .map(|i| peer((i % 250) as u8, 1))
            .collect();
        body.push_torrent(InfoHash([1; 20]), 3, Some(9), &peers)
            .expect("encodes");
        assert_eq!(body.peers(), peers.len() as u64);
        let contents = parse(&body.into_file(UnixSeconds(1)), &KEY).expect("parses");
        assert_eq!(contents.records.len(), 2);
        assert_eq!(contents.records[1].peers.len(), 5);
        assert!(contents
            .records
            .iter()
            .all(|r| r.private_torrent == Some(9)));
    }

    /// A body built in many buffers is the file one buffer would make:
    /// the checksum runs over the parts as over their concatenation.
    #[test]
    fn a_body_in_chunks_is_one_file() {
        let mut chunked = SnapshotBody::default();
        let mut whole = Vec::new();
        for t in 0..20u8 {
            chunked.start_chunk(16);
            let peers: Vec<PeerRecord> = (0..t).map(|n| peer(n, 1)).collect();
            chunked
                .push_torrent(InfoHash([t; 20]), 1, None, &peers)
                .expect("encodes");
            if !peers.is_empty() {
                codec::encode_into(
                    &TorrentRecord {
                        info_hash: [t; 20],
                        completed: 1,
                        private_torrent: None,
                        peers,
                    },
                    &mut whole,
                )
                .expect("encodes");
            }
        }
        let file = chunked.into_file(UnixSeconds(7));
        assert_eq!(file, file_bytes(FORMAT_VERSION, UnixSeconds(7), 19, &whole));
        assert_eq!(parse(&file, &KEY).expect("parses").records.len(), 19);
    }

    /// A version 2 file (the previous release's: no private swarms) loads
    /// as public swarms.
    #[test]
    fn a_version_2_file_keeps_loading() {
        let old = TorrentRecordV2 {
            info_hash: [3; 20],
            completed: 4,
            peers: vec![peer(2, 5), peer(3, 6)],
        };
        let mut body = Vec::new();
        codec::encode_into(&old, &mut body).expect("encodes");
        let file = file_bytes(2, UnixSeconds(10), 1, &body);
        let contents = parse(&file, &KEY).expect("a version 2 file loads");
        assert_eq!(contents.records, vec![TorrentRecord::from(old)]);
        assert_eq!(contents.records[0].private_torrent, None);
    }

    /// A version 1 file as this build first wrote it, byte for byte: when
    /// version 2 comes, this must still load (through the version 1 row of
    /// `READERS`), or an upgrade loses every swarm.
    #[test]
    fn a_version_1_file_keeps_loading() {
        let mut record = Vec::new();
        record.extend_from_slice(&[0xab; 20]); // info hash
        record.push(7); // completed (varint)
        record.push(1); // one peer
        record.push(0); // IpRecord::V4
        record.extend_from_slice(&[192, 0, 2, 1]);
        record.extend_from_slice(&[251, 0xe1, 0x1a]); // port 6881 (varint: 251, u16 LE)
        record.extend_from_slice(&[0x2d; 20]); // peer id
        record.push(1); // seeder
        record.push(42); // age
        let file = file_bytes(1, UnixSeconds(1_800_000_000), 1, &record);
        let contents = parse(&file, &KEY).expect("a version 1 file loads");
        assert_eq!(
            contents.records,
            vec![TorrentRecord {
                info_hash: [0xab; 20],
                completed: 7,
                private_torrent: None,
                peers: vec![PeerRecord {
                    ip: IpRecord::V4([192, 0, 2, 1]),
                    port: 6881,
                    // Hashed with the current key when read.
                    peer_id_hash: KEY.hash(&PeerId([0x2d; 20])),
                    peer_id: Some([0x2d; 20]),
                    seeder: true,
                    age_secs: 42,
                }],
            }]
        );
    }

    #[test]
    fn every_damage_is_refused_whole() {
        let file = sample_file(5);
        assert!(matches!(
            parse(&[], &KEY),
            Err(SnapshotError::Truncated { got: 0, .. })
        ));
        assert!(matches!(
            parse(b"hello world, this is some other file entirely......", &KEY),
            Err(SnapshotError::Foreign)
        ));
        for cut in [1, 20, HEADER_BYTES, file.len() - 1] {
            assert!(
                matches!(
                    parse(&file[..cut], &KEY),
                    Err(SnapshotError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            parse(&longer, &KEY),
            Err(SnapshotError::TrailingBytes(1))
        ));
        // Every single flipped byte is caught, wherever it is.
        for i in 0..file.len() {
            let mut flipped = file.clone();
            flipped[i] ^= 0x10;
            assert!(parse(&flipped, &KEY).is_err(), "flip at {i}");
        }
        let mut newer = file.clone();
        newer[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert!(
            matches!(parse(&newer, &KEY), Err(SnapshotError::Newer(v)) if v == FORMAT_VERSION + 1)
        );
        newer[8..10].copy_from_slice(&0u16.to_le_bytes());
        assert!(matches!(parse(&newer, &KEY), Err(SnapshotError::Older(0))));
    }

    #[test]
    fn a_consistent_file_with_garbage_records_is_refused() {
        // Right header, right checksum, records that do not decode.
        let file = file_bytes(1, UnixSeconds(1), 3, &[0xff; 64]);
        assert!(matches!(
            parse(&file, &KEY),
            Err(SnapshotError::Record { .. })
        ));
        let good = sample_file(1);
        let body = &good[HEADER_BYTES..];
        let miscounted = file_bytes(FORMAT_VERSION, UnixSeconds(1), 2, body);
        assert!(matches!(
            parse(&miscounted, &KEY),
            Err(SnapshotError::RecordCount {
                got: 4,
                expected: 2
            })
        ));
    }

    #[test]
    fn ages_carry_over_and_old_peers_are_dropped() {
        let timeout = Duration::from_secs(100);
        let now = SecondsSinceStart(1000);
        let entry = BtPeerEntry {
            peer_id_hash: 11,
            peer_id: None,
            ip: "10.0.0.1".parse().expect("ip"),
            port: 1,
            seeder: false,
            valid_until: ValidUntil(SecondsSinceStart(1070)),
        };
        let record = PeerRecord::from_entry(&entry, now, timeout);
        assert_eq!(record.age_secs, 30);
        let back = record
            .to_entry(SecondsSinceStart(5), timeout)
            .expect("young enough");
        assert_eq!(back.valid_until, ValidUntil(SecondsSinceStart(75)));
        assert_eq!(
            PeerRecord {
                age_secs: 100,
                ..record
            }
            .to_entry(now, timeout),
            None
        );
    }

    #[test]
    fn restore_reshards_drops_expired_and_rejects_bad_files() {
        let dir = temp_dir("restore");
        let state = StateDir::open(&dir, 3).expect("opens");
        // Written by a process of two executors, 100 s ago.
        state.write_snapshot(0, &sample_file(900)).expect("writes");
        state.write_snapshot(1, b"garbage").expect("writes");
        let restored = state.restore(3, UnixSeconds(1000), Duration::from_secs(150), &KEY);
        assert_eq!((restored.files, restored.rejected_files), (1, 1));
        assert_eq!(restored.oldest_secs, 100);
        for (shard, records) in restored.per_shard.iter().enumerate() {
            for r in records {
                assert_eq!(shard_of(&InfoHash(r.info_hash), 3).0, shard);
                assert!(r
                    .peers
                    .iter()
                    .all(|p| p.age_secs < 150 && p.age_secs >= 100));
            }
        }
        // Ages 0..=110 in steps of 10, plus 100 s: those of 50 and more go.
        let kept: u64 = restored
            .per_shard
            .iter()
            .flatten()
            .map(|r| r.peers.len() as u64)
            .sum();
        assert_eq!(kept, restored.peers);
        assert_eq!(restored.peers + restored.expired, 3 + 6 + 9 + 12);
        assert!(dir.join("swarms-1.snapshot.rejected").exists());
        assert!(!dir.join("swarms-1.snapshot").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    /// A state directory holding a version 1 file (the previous release's)
    /// restores into the compact swarms: re-sharded, expired peers
    /// dropped, and each peer's next announce from the same address finds
    /// it (its id hashed with the current key) instead of adding another.
    #[test]
    fn a_version_1_state_directory_restores_into_the_swarms() {
        use crate::swarm::{BtAnnounce, BtShard, PeerIdUse};
        use aquatic_common::SelectedPeers;
        let dir = temp_dir("v1");
        let state = StateDir::open(&dir, 2).expect("opens");
        let key = state.peer_id_key().expect("key");
        let peer = |n: u8, seeder: bool, age_secs: u32| PeerRecordV1 {
            ip: IpRecord::V4([10, 0, 0, n]),
            port: 6881,
            peer_id: [n; 20],
            seeder,
            age_secs,
        };
        let records: Vec<TorrentRecordV1> = (0..8u8)
            .map(|t| TorrentRecordV1 {
                info_hash: [t; 20],
                completed: u32::from(t),
                peers: vec![peer(t, t % 2 == 0, 10), peer(100 + t, false, 200)],
            })
            .collect();
        // Written 50 s ago by a process of one executor.
        state
            .write_snapshot(0, &v1_file(950, &records))
            .expect("writes");
        let restored = state.restore(2, UnixSeconds(1000), Duration::from_secs(150), &key);
        assert_eq!((restored.files, restored.rejected_files), (1, 0));
        assert_eq!((restored.peers, restored.expired), (8, 8));
        let now = SecondsSinceStart(0);
        let timeout = Duration::from_secs(150);
        for (shard, records) in restored.per_shard.into_iter().enumerate() {
            let mut bt = BtShard::new(timeout, Duration::from_secs(30)).with_peer_id_key(key);
            let mut entries = Vec::new();
            for record in &records {
                assert_eq!(shard_of(&InfoHash(record.info_hash), 2).0, shard);
                entries.clear();
                entries.extend(record.peers.iter().filter_map(|p| p.to_entry(now, timeout)));
                bt.restore(InfoHash(record.info_hash), record.completed, now, &entries);
            }
            let held = bt.peer_counts();
            assert_eq!(held.total(), records.len());
            let mut rng = rand::thread_rng();
            let mut out = SelectedPeers::default();
            for record in &records {
                let t = record.info_hash[0];
                let scraped = bt.scrape(&InfoHash(record.info_hash));
                assert_eq!(scraped.completed, u32::from(t));
                bt.announce(
                    timeout,
                    now,
                    &mut rng,
                    &BtAnnounce {
                        info_hash: InfoHash(record.info_hash),
                        peer_id: PeerId([t; 20]),
                        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, t)),
                        port: 6881,
                        stopped: false,
                        completed: false,
                        bytes_left: Some(1),
                        numwant: 10,
                        private: None,
                        peer_ids: PeerIdUse::Hashed,
                    },
                    &mut out,
                );
            }
            // Every peer re-announced as a leecher: the same peers, not new ones.
            let after = bt.peer_counts();
            assert_eq!((after.seeders, after.leechers), (0, records.len()));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_peer_id_key_is_derived_from_the_key_file_and_survives_a_restart() {
        let dir = temp_dir("peer-key");
        let state = StateDir::open(&dir, 1).expect("opens");
        let key = peer_id_key(Some(&state)).expect("made");
        let material = fs::read(dir.join(KEY_FILE)).expect("key file");
        assert_eq!(key, PeerIdKey::from_material(&material));
        drop(state);
        let state = StateDir::open(&dir, 1).expect("free again");
        assert_eq!(state.peer_id_key().expect("read"), key);
        assert_ne!(
            peer_id_key(None).expect("random"),
            peer_id_key(None).expect("random")
        );
        let _ = fs::remove_dir_all(&dir);
    }

    fn accounting_sample() -> Accounting {
        let batch = |up: u64, torrents: u32| {
            let mut batch = Batch::default();
            for t in 0..torrents {
                batch.transfers.insert(
                    (UserId(1), TorrentId(t)),
                    Transfer {
                        uploaded: up,
                        downloaded: 2,
                        ip: "::1".parse().expect("ip"),
                        port: 7,
                    },
                );
                batch.counts.insert(
                    TorrentId(t),
                    aquatic_common::PeerCounts {
                        seeders: 1,
                        leechers: 2,
                    },
                );
            }
            batch.snatches.insert((UserId(1), TorrentId(0)), 1);
            batch
        };
        Accounting {
            baselines: (0..ACCOUNTING_RECORD_ITEMS as u32 + 3)
                .map(|n| BaselineRecord {
                    info_hash: [(n % 7) as u8; 20],
                    user: n,
                    peer_id: [1; 20],
                    uploaded: u64::from(n) * 10,
                    downloaded: 5,
                    seeding: n % 2 == 0,
                    age_secs: n % 100,
                })
                .collect(),
            // Big enough to span records: the parts merge back.
            in_flight: Some((41, batch(100, ACCOUNTING_RECORD_ITEMS as u32 + 10))),
            pending: batch(3, 2),
        }
    }

    #[test]
    fn accounting_round_trips_and_damage_is_refused() {
        let accounting = accounting_sample();
        let file = accounting.to_file(UnixSeconds(50)).expect("encodes");
        let (back, created_at) = Accounting::parse(&file).expect("parses");
        assert_eq!(created_at, UnixSeconds(50));
        assert_eq!(back, accounting);
        assert!(matches!(
            Accounting::parse(&sample_file(1)),
            Err(SnapshotError::Foreign)
        ));
        let mut flipped = file.clone();
        flipped[HEADER_BYTES + 3] ^= 1;
        assert!(matches!(
            Accounting::parse(&flipped),
            Err(SnapshotError::Checksum)
        ));
        assert!(Accounting::parse(&file[..file.len() - 1]).is_err());
        // Without a batch in flight, nothing comes back as one.
        let plain = Accounting {
            in_flight: None,
            ..accounting_sample()
        };
        let file = plain.to_file(UnixSeconds(1)).expect("encodes");
        assert_eq!(Accounting::parse(&file).expect("parses").0, plain);
    }

    /// The file is read once: taken, its baselines re-sharded and aged,
    /// and removed, so that no later start (after a crash) uses them again.
    #[test]
    fn accounting_is_taken_once() {
        let dir = temp_dir("accounting");
        let state = StateDir::open(&dir, 2).expect("opens");
        assert!(state
            .take_accounting(2, UnixSeconds(100), Duration::from_secs(60))
            .is_none());
        let accounting = accounting_sample();
        state
            .write_accounting(&accounting, UnixSeconds(90))
            .expect("writes");
        let restored = state
            .take_accounting(3, UnixSeconds(100), Duration::from_secs(60))
            .expect("there");
        // Ages 0..=99 plus 10 s: those of 50 and more expired.
        let kept = accounting
            .baselines
            .iter()
            .filter(|b| b.age_secs + 10 < 60)
            .count() as u64;
        assert_eq!(restored.baselines, kept);
        assert_eq!(
            restored.baselines + restored.expired,
            accounting.baselines.len() as u64
        );
        for (shard, baselines) in restored.per_shard.iter().enumerate() {
            assert!(baselines
                .iter()
                .all(|b| shard_of(&InfoHash(b.info_hash), 3).0 == shard));
        }
        assert_eq!(restored.in_flight, accounting.in_flight);
        assert_eq!(restored.pending, accounting.pending);
        assert!(!state.accounting_path().exists());
        assert!(state
            .take_accounting(3, UnixSeconds(100), Duration::from_secs(60))
            .is_none());
        // A damaged one is set aside, not used.
        fs::write(state.accounting_path(), b"AQTACCT\0 broken").expect("write");
        assert!(state
            .take_accounting(3, UnixSeconds(100), Duration::from_secs(60))
            .is_none());
        assert!(dir.join("private-accounting.snapshot.rejected").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_of_executors_gone_are_removed_once_all_have_written() {
        let dir = temp_dir("extra");
        let state = StateDir::open(&dir, 2).expect("opens");
        for i in 0..3 {
            fs::write(state.snapshot_path(i), b"x").expect("write");
        }
        state.write_snapshot(0, b"a").expect("writes");
        assert!(
            state.snapshot_path(2).exists(),
            "executor 1 has not written"
        );
        state.write_snapshot(1, b"b").expect("writes");
        assert!(!state.snapshot_path(2).exists());
        assert!(state.snapshot_path(1).exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_directory_is_locked_and_the_key_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("lock");
        let state = StateDir::open(&dir, 1).expect("opens");
        assert!(matches!(
            StateDir::open(&dir, 1),
            Err(StateDirError::InUse { .. })
        ));
        let key = connection_id_key(Some(&state)).expect("made");
        let mode = fs::metadata(dir.join(KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(state);
        let state = StateDir::open(&dir, 1).expect("free again");
        assert_eq!(state.connection_id_key().expect("read"), key);
        fs::write(dir.join(KEY_FILE), b"short").expect("write");
        assert!(matches!(
            state.connection_id_key(),
            Err(StateDirError::KeyTooShort { got: 5, .. })
        ));
        assert_ne!(
            connection_id_key(None).expect("random"),
            connection_id_key(None).expect("random")
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
