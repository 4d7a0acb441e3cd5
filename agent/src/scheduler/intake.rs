//! The way from the device tasks to the uplink: a bounded channel of one
//! `Vec` per poll, with room for a few polls per device.
//!
//! A tokio channel's capacity is fixed when it is made, but a reload may
//! take an agent from 10 devices to 10,000. So the channel is made at the
//! largest size ([`MAX_ROOM`]) and the room actually given out is a
//! semaphore, [`Room`]: a device task takes a permit before its slot and
//! the uplink gives one back for each `Vec` it takes. A reload grows the
//! room to the new fleet's size (it never shrinks: a fleet that shrank
//! keeps the room it had, which is still bounded by [`MAX_ROOM`]).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::reading::Reading;

/// Room for at least this many polls, whatever the fleet's size.
pub const MIN_ROOM: usize = 64;
/// Room for at most this many polls, whatever the fleet's size (the
/// channel's capacity).
pub const MAX_ROOM: usize = 65_536;

/// The room a fleet of `devices` gets: one poll per device, within
/// [`MIN_ROOM`]..=[`MAX_ROOM`].
pub fn room_for(devices: usize) -> usize {
    devices.clamp(MIN_ROOM, MAX_ROOM)
}

/// The room of the intake: the permits the device tasks take and the
/// uplink gives back ([`Room::taken`]).
#[derive(Debug, Clone)]
pub struct Room {
    permits: Arc<Semaphore>,
}

impl Room {
    /// The uplink took one poll's `Vec` off the channel.
    pub fn taken(&self) {
        self.permits.add_permits(1);
    }
}

/// Where device tasks send their readings (one `Vec` per poll). Clones
/// share the channel and the room.
#[derive(Debug, Clone)]
pub struct ReadingsTx {
    tx: mpsc::Sender<Vec<Reading>>,
    /// `None`: the channel's own capacity is the room.
    room: Option<Arc<Semaphore>>,
    /// The room given out so far (grown by [`ReadingsTx::grow_to`]).
    size: usize,
}

/// A place on the channel for one poll's readings.
pub struct Slot<'a> {
    permit: mpsc::Permit<'a, Vec<Reading>>,
    room: Option<OwnedSemaphorePermit>,
}

impl Slot<'_> {
    pub fn send(self, readings: Vec<Reading>) {
        self.permit.send(readings);
        // The uplink gives it back when it takes the readings.
        if let Some(p) = self.room {
            p.forget();
        }
    }
}

/// A channel for a fleet of `devices`: the device tasks' end, the room the
/// uplink gives back, and the uplink's end.
pub fn intake(devices: usize) -> (ReadingsTx, Room, mpsc::Receiver<Vec<Reading>>) {
    let (tx, rx) = mpsc::channel(MAX_ROOM);
    let size = room_for(devices);
    let permits = Arc::new(Semaphore::new(size));
    (
        ReadingsTx {
            tx,
            room: Some(permits.clone()),
            size,
        },
        Room { permits },
        rx,
    )
}

impl From<mpsc::Sender<Vec<Reading>>> for ReadingsTx {
    /// A plain channel, whose capacity is the room (tests, the bench).
    fn from(tx: mpsc::Sender<Vec<Reading>>) -> Self {
        let size = tx.max_capacity();
        ReadingsTx {
            tx,
            room: None,
            size,
        }
    }
}

impl ReadingsTx {
    /// Waits for room, then for a slot; `None` once the uplink is gone.
    pub async fn reserve(&self) -> Option<Slot<'_>> {
        let room = match &self.room {
            Some(r) => Some(r.clone().acquire_owned().await.ok()?),
            None => None,
        };
        let permit = self.tx.reserve().await.ok()?;
        Some(Slot { permit, room })
    }

    /// Grows the room to that of a fleet of `devices` (never shrinks it).
    pub fn grow_to(&mut self, devices: usize) {
        let wanted = room_for(devices);
        if let Some(r) = &self.room
            && wanted > self.size
        {
            r.add_permits(wanted - self.size);
            self.size = wanted;
        }
    }

    /// The room given out (polls that may wait for the uplink at once).
    pub fn room(&self) -> usize {
        self.size
    }
}
