//! The series ids declared on one stream: a batch declares the series it
//! uses that the stream has not seen yet.

use tributary_proto::v1 as pb;

use super::encode::{for_each_series, series_decl};
use super::series_ids::SeriesIds;

/// The series ids declared on one stream (bit `id`).
#[derive(Debug, Default)]
pub(super) struct Declared(Vec<u64>);

impl Declared {
    /// Marks `id` declared; true if it was not yet.
    pub(super) fn declare(&mut self, id: u32) -> bool {
        let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let new = self.0[word] & bit == 0;
        self.0[word] |= bit;
        new
    }

    fn undeclare(&mut self, id: u32) {
        if let Some(word) = self.0.get_mut(id as usize / 64) {
            *word &= !(1u64 << (id % 64));
        }
    }

    /// Declarations of the series `batch` uses that are not declared yet,
    /// which are then marked declared. `Err(id)` (and nothing marked) if
    /// `batch` uses an id `ids` does not know.
    pub(super) fn missing(
        &mut self,
        batch: &pb::Batch,
        ids: &SeriesIds,
    ) -> Result<Vec<pb::SeriesDecl>, u32> {
        let mut decls = Vec::new();
        let mut broken = None;
        for_each_series(batch, |id| {
            if broken.is_some() {
                return;
            }
            // Known ids only: a bit per id, so an unknown (huge) id must not
            // grow the set.
            match ids.key(id) {
                Some(key) if self.declare(id) => decls.push(series_decl(id, key)),
                Some(_) => {}
                None => broken = Some(id),
            }
        });
        match broken {
            None => Ok(decls),
            Some(id) => {
                for d in &decls {
                    self.undeclare(d.id);
                }
                Err(id)
            }
        }
    }
}
