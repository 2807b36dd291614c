//! The cluster: several nodes, one tracker.
//!
//! - [`ownership`]: which member owns an info hash (rendezvous hashing).
//! - [`members`]: the member list, this node, the live set and liveness.
//! - [`frame`]: what crosses a link and how it is framed.
//! - [`tls`]: mutual TLS between members, names checked both ways.

pub mod frame;
pub mod link;
pub mod members;
pub mod ownership;
pub mod queue;
pub mod tls;
