//! Open connections per source address, so one host (or one attacker)
//! cannot take every `max_connections` slot.
//!
//! [`PerAddress`] is the table; the accept task asks it for a
//! [`AddressSlot`] before it admits a connection, and the slot, carried by
//! the connection, gives its place back when dropped. Drops happen in
//! whichever task tonic runs the connection on, synchronously, so the table
//! is a `std` Mutex (nothing awaits while holding it; each hold is one map
//! operation) rather than an actor that a `Drop` could not wait for.
//! Loopback is an address like any other.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// How many connections each source address has open, under a cap.
#[derive(Debug)]
pub struct PerAddress {
    /// Set by the accept task only (at start and at a reload); a lower cap
    /// leaves connections open and refuses new ones until below it.
    cap: AtomicUsize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    pub fn new(cap: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            cap: AtomicUsize::new(cap.max(1)),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more connection from `ip`, or `None` when it has
    /// `cap` open already. IPv4-mapped IPv6 addresses count as IPv4.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.cap.load(Ordering::Relaxed) {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            ip,
        })
    }

    /// A new cap, for the connections admitted from now on.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap.max(1), Ordering::Relaxed);
    }

    /// Connections open from `ip`.
    #[cfg(test)]
    pub fn open(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    /// Addresses with at least one connection open.
    #[cfg(test)]
    pub fn addresses(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One connection's place in [`PerAddress`]; dropping it frees the place.
#[derive(Debug)]
pub struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // No entry outlives its last connection: the table is
                // bounded by the open connections, not by every address seen.
                open.remove(&self.ip);
            }
        }
    }
}
