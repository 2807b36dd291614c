//! glommio adapters: the tasks that move bytes between sockets and shards.
//!
//! Each protocol module turns bytes into requests with its sans-IO protocol
//! crate, hands them to the local shard or to the owning executor, and
//! writes the answers back. No tracker rule lives here.

pub(crate) mod http;
pub(crate) mod udp;
mod udp_batch;
pub(crate) mod ws;

use std::{
    cell::Cell,
    future::Future,
    os::fd::{FromRawFd, IntoRawFd},
    rc::Rc,
    time::Duration,
};

use glommio::{
    net::{TcpListener, TcpStream},
    timer::sleep,
};

use crate::executor::{spawn, Executor};

/// Accepts connections on `listener` forever and runs `serve` for each one
/// that fits under `max` as its own task. Connections over the cap are
/// closed at once and counted by `refused`; a stopping executor admits none.
pub(crate) async fn accept_loop<F, Fut>(
    ex: &Executor,
    listener: &Listener,
    protocol: &str,
    max: usize,
    refused: impl Fn(&Executor),
    mut serve: F,
) where
    F: FnMut(TcpStream, OpenConnection) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    loop {
        let stream = match listener.listener.accept().await {
            Ok(stream) => stream,
            Err(err) => {
                log::warn!("{protocol} accept failed: {err}");
                // Out of file descriptors, most likely: let some close.
                sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if ex.stopping.get() {
            continue;
        }
        let Some(open) = listener.admit(max) else {
            refused(ex);
            continue;
        };
        let _ = stream.set_nodelay(true);
        spawn(ex.requests_queue, serve(stream, open));
    }
}

/// `future`'s output, or None after `limit`.
pub(crate) async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(future.await) }, async {
        sleep(limit).await;
        None
    })
    .await
}

/// A TCP listener bound by the main thread, with a count of the
/// connections it has open (for the per-executor cap).
pub(crate) struct Listener {
    pub(crate) listener: TcpListener,
    open_connections: Rc<Cell<usize>>,
}

impl Listener {
    pub(crate) fn new(socket: socket2::Socket) -> Self {
        // SAFETY: the fd is a bound, listening TCP socket that we own.
        let listener = unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) };
        Self {
            listener,
            open_connections: Rc::default(),
        }
    }

    /// Counts a new connection, or None when `max` are already open.
    pub(crate) fn admit(&self, max: usize) -> Option<OpenConnection> {
        if self.open_connections.get() >= max {
            return None;
        }
        self.open_connections.set(self.open_connections.get() + 1);
        Some(OpenConnection(self.open_connections.clone()))
    }
}

/// Counts a connection while it lives.
pub(crate) struct OpenConnection(Rc<Cell<usize>>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}
