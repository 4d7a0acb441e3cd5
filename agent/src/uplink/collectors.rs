//! The collectors an uplink may stream to: a list that cannot be empty, and
//! the rotation through it (a stable start per agent, the next one after a
//! failed connect).

/// The collector URLs of an uplink, in the configured order; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collectors(Vec<String>);

/// [`Collectors::new`] was given no URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no collector URL: an uplink needs at least one")]
pub struct NoCollectors;

impl Collectors {
    /// The list `urls`, refused when empty.
    pub fn new(urls: Vec<String>) -> Result<Self, NoCollectors> {
        if urls.is_empty() {
            return Err(NoCollectors);
        }
        Ok(Collectors(urls))
    }

    /// The URLs, in order.
    pub fn urls(&self) -> &[String] {
        &self.0
    }

    /// Where agent `agent_id` starts: agents spread over the collectors by a
    /// stable hash of their id, and come back to the same one after a
    /// restart.
    pub fn start_for(&self, agent_id: &str) -> usize {
        (fnv1a64(agent_id.as_bytes()) % self.0.len() as u64) as usize
    }

    /// The URL at position `index` of the rotation (any number: the list
    /// wraps around).
    pub fn at(&self, index: usize) -> &str {
        &self.0[index % self.0.len()]
    }
}

/// FNV-1a, 64 bit, followed by the MurmurHash3 finalizer: a hash that stays
/// the same across Rust versions and platforms (unlike `DefaultHasher`).
/// Without the finalizer the low bits of FNV-1a follow the last byte's (ids
/// `edge-0`, `edge-2`, ... would all pick the same collector of two).
pub(super) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}
