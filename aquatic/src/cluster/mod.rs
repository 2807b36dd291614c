//! The cluster: several nodes, one tracker. Which node owns a torrent
//! ([`ownership`]); more to come (links, forwarding).

pub mod ownership;
