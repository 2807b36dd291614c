//! glommio adapters: the tasks that move bytes between sockets and shards.
//!
//! Each protocol module turns bytes into requests with its sans-IO protocol
//! crate, hands them to the local shard or to the owning executor, and
//! writes the answers back. No tracker rule lives here.

pub(crate) mod http;
pub(crate) mod udp;
mod udp_batch;
