//! Many datagrams per system call: `recvmmsg` and `sendmmsg` on the socket
//! glommio owns.
//!
//! A tracker's work per datagram is small, so the system calls dominate:
//! after glommio's io_uring receive wakes the UDP task, the task drains what
//! else is queued with one non-blocking `recvmmsg` and answers the whole
//! batch with one non-blocking `sendmmsg`. Only what the kernel refuses
//! (`EAGAIN`) goes through glommio's asynchronous send.

use std::{
    io,
    mem::{size_of, zeroed},
    net::SocketAddr,
    os::fd::RawFd,
};

use socket2::SockAddr;

/// Fixed-size slots of datagram bytes with their peer addresses.
pub(crate) struct DatagramBatch {
    slot_size: usize,
    buffers: Vec<u8>,
    lengths: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    len: usize,
}

impl DatagramBatch {
    /// Room for `slots` datagrams of up to `slot_size` bytes.
    pub(crate) fn new(slots: usize, slot_size: usize) -> Self {
        Self {
            slot_size,
            buffers: vec![0; slots * slot_size],
            lengths: vec![0; slots],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs
            // for which all-zero bytes are a valid value.
            addrs: vec![unsafe { zeroed() }; slots],
            addr_lens: vec![0; slots],
            iovecs: vec![unsafe { zeroed() }; slots],
            headers: vec![unsafe { zeroed() }; slots],
            len: 0,
        }
    }

    /// Slots in use.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// All slots in use.
    pub(crate) fn is_full(&self) -> bool {
        self.len == self.lengths.len()
    }

    /// Forgets every datagram.
    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// The bytes and peer of datagram `i`.
    pub(crate) fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if i >= self.len {
            return None;
        }
        let start = i * self.slot_size;
        let bytes = &self.buffers[start..start + self.lengths[i]];
        // SAFETY: the kernel (recvmmsg) or `push` filled this storage with a
        // socket address of the recorded length.
        let addr = unsafe { SockAddr::new(self.addrs[i], self.addr_lens[i]) };
        addr.as_socket().map(|a| (bytes, a))
    }

    /// Appends a datagram for `peer`, written by `write` into a slot; `write`
    /// returns the length it wrote, or None to cancel. Returns false when the
    /// batch is full.
    pub(crate) fn push(
        &mut self,
        peer: SocketAddr,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> bool {
        if self.is_full() {
            return false;
        }
        let i = self.len;
        let start = i * self.slot_size;
        let Some(n) = write(&mut self.buffers[start..start + self.slot_size]) else {
            return true;
        };
        self.lengths[i] = n.min(self.slot_size);
        let addr = SockAddr::from(peer);
        // SAFETY: `addr` holds `addr.len()` valid bytes, which fit in a
        // sockaddr_storage.
        unsafe {
            std::ptr::copy_nonoverlapping(
                addr.as_ptr().cast::<u8>(),
                (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast::<u8>(),
                addr.len() as usize,
            );
        }
        self.addr_lens[i] = addr.len();
        self.len += 1;
        true
    }

    fn prepare_headers(&mut self, range: std::ops::Range<usize>, receiving: bool) {
        for i in range {
            let start = i * self.slot_size;
            self.iovecs[i] = libc::iovec {
                iov_base: self.buffers[start..].as_mut_ptr().cast(),
                iov_len: if receiving {
                    self.slot_size
                } else {
                    self.lengths[i]
                },
            };
            // SAFETY: all-zero is a valid msghdr.
            let mut hdr: libc::msghdr = unsafe { zeroed() };
            hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = if receiving {
                size_of::<libc::sockaddr_storage>() as libc::socklen_t
            } else {
                self.addr_lens[i]
            };
            hdr.msg_iov = &mut self.iovecs[i];
            hdr.msg_iovlen = 1;
            self.headers[i] = libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            };
        }
    }

    /// Receives whatever is queued on `fd`, up to the batch size, without
    /// waiting. Replaces the batch's contents; returns how many arrived.
    pub(crate) fn receive_nonblocking(&mut self, fd: RawFd) -> io::Result<usize> {
        let slots = self.lengths.len();
        self.prepare_headers(0..slots, true);
        // SAFETY: every header points into buffers owned by `self` that
        // outlive the call, with the lengths set above.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                slots as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.len = 0;
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(err)
            };
        }
        let n = n as usize;
        for i in 0..n {
            let hdr = &self.headers[i];
            // A datagram larger than the slot was cut: no request is that
            // long, so it is dropped as an empty datagram.
            self.lengths[i] = if hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                0
            } else {
                (hdr.msg_len as usize).min(self.slot_size)
            };
            self.addr_lens[i] = hdr.msg_hdr.msg_namelen;
        }
        self.len = n;
        Ok(n)
    }

    /// Sends datagrams `from..len()` without waiting. Returns how many the
    /// kernel took; the rest are left for the caller. An error concerns the
    /// first datagram of the range.
    pub(crate) fn send_nonblocking(&mut self, fd: RawFd, from: usize) -> io::Result<usize> {
        if from >= self.len {
            return Ok(0);
        }
        self.prepare_headers(from..self.len, false);
        // SAFETY: as in `receive_nonblocking`.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.headers[from..].as_mut_ptr(),
                (self.len - from) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(err)
            };
        }
        Ok(n as usize)
    }
}
