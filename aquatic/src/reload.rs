//! Values the main thread replaces at runtime (access list, TLS
//! configurations), and each executor's lock-free copy of them.

use std::{
    cell::{Cell, RefCell},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

/// A value the main thread replaces at runtime (access list, TLS config).
///
/// Executors compare `generation` on a timer and take a new `Arc` only when
/// it changed, so the request path reads an executor-local copy: no lock,
/// no atomic.
pub struct Reloadable<T> {
    generation: AtomicU64,
    value: Mutex<Arc<T>>,
}

impl<T> Reloadable<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Self {
        Self {
            generation: AtomicU64::new(0),
            value: Mutex::new(Arc::new(value)),
        }
    }

    /// Replaces the value; executors pick it up within a fraction of a second.
    pub fn replace(&self, value: T) {
        *self.value.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current value and its generation.
    pub fn current(&self) -> (u64, Arc<T>) {
        let generation = self.generation();
        let value = self.value.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (generation, value)
    }
}

/// An executor's copy of a [`Reloadable`].
pub struct LocalCopy<T> {
    shared: Arc<Reloadable<T>>,
    seen: Cell<u64>,
    value: RefCell<Arc<T>>,
}

impl<T> LocalCopy<T> {
    /// Copies the current value.
    pub fn new(shared: Arc<Reloadable<T>>) -> Self {
        let (generation, value) = shared.current();
        Self {
            shared,
            seen: Cell::new(generation),
            value: RefCell::new(value),
        }
    }

    /// The local value.
    pub fn get(&self) -> Arc<T> {
        self.value.borrow().clone()
    }

    /// Takes the shared value if it changed; the new value if it did.
    pub fn refresh(&self) -> Option<Arc<T>> {
        if self.shared.generation() == self.seen.get() {
            return None;
        }
        let (generation, value) = self.shared.current();
        self.seen.set(generation);
        *self.value.borrow_mut() = value.clone();
        Some(value)
    }
}
