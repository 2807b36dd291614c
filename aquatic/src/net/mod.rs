//! glommio adapters: the tasks that move bytes between sockets and the router.
//!
//! Each protocol module turns bytes into requests with its sans-IO protocol
//! crate, hands them to the [`Router`](crate::router::Router), and writes
//! the answers back with the same crate. No tracker rule lives here: the
//! adapters only know their wire formats, connections and timeouts.

pub mod http;
pub mod lazy_aead;
pub mod steering;
pub mod udp;
mod udp_batch;
pub mod ws;
mod ws_tls;

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

/// Runs `future` as a detached task in the current task queue: a task
/// spawned while serving a request serves requests too.
pub(crate) fn spawn_request_task(future: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(future).detach();
}

/// A TCP listener bound by the main thread, with a count of the
/// connections it has open (for the per-executor cap).
pub struct Listener {
    listener: TcpListener,
    open_connections: Rc<Cell<usize>>,
    stopping: Cell<bool>,
}

impl Listener {
    /// Takes over a bound, listening socket.
    pub fn new(socket: socket2::Socket) -> Self {
        // SAFETY: the fd is a bound, listening TCP socket that we own.
        let listener = unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) };
        Self {
            listener,
            open_connections: Rc::default(),
            stopping: Cell::new(false),
        }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open_connections.get()
    }

    /// Admits no more connections (the executor is stopping).
    pub fn stop_accepting(&self) {
        self.stopping.set(true);
    }

    /// Counts a new connection, or None when `max` are already open.
    fn admit(&self, max: usize) -> Option<OpenConnection> {
        if self.open_connections.get() >= max {
            return None;
        }
        self.open_connections.set(self.open_connections.get() + 1);
        Some(OpenConnection(self.open_connections.clone()))
    }

    /// Accepts connections forever and runs `serve` for each one that fits
    /// under `max()` (read per connection: a reload may change it) as its
    /// own task. Connections over the cap are closed at
    /// once and reported to `refused`; a stopping listener admits none.
    pub(crate) async fn accept_loop<F, Fut>(
        &self,
        protocol: &str,
        max: impl Fn() -> usize,
        refused: impl Fn(),
        mut serve: F,
    ) where
        F: FnMut(TcpStream, OpenConnection) -> Fut,
        Fut: Future<Output = ()> + 'static,
    {
        loop {
            let stream = match self.listener.accept().await {
                Ok(stream) => stream,
                Err(err) => {
                    log::warn!("{protocol} accept failed: {err}");
                    // Out of file descriptors, most likely: let some close.
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if self.stopping.get() {
                continue;
            }
            let Some(open) = self.admit(max()) else {
                refused();
                continue;
            };
            let _ = stream.set_nodelay(true);
            spawn_request_task(serve(stream, open));
        }
    }
}

/// Counts a connection while it lives.
pub struct OpenConnection(Rc<Cell<usize>>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}
