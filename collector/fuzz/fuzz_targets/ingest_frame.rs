//! Frame validation of an ingest session: any bytes, decoded as an
//! `AgentFrame` the way tonic would, then checked as a Hello (fields and
//! identity) or as a Batch (against an empty stream and one with declared
//! series), rows and columns. Nothing may panic; a batch that passes must
//! declare only ids that are new, and convert whole: one stored reading per
//! row and per column entry.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tributary_collector::roles::Roles;
use tributary_collector::session::{self, Limits, PeerAuth, StreamSeries};
use tributary_proto::v1 as pb;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = pb::AgentFrame::decode(data) else {
        return;
    };
    let limits = Limits::default();
    match frame.frame {
        Some(pb::agent_frame::Frame::Hello(hello)) => {
            let _ = session::check_hello(&hello, &limits);
            let auth = PeerAuth::Certificate("edge-1".into());
            let _ = session::authorize(&hello.agent_id, &auth, &Roles::default());
        }
        Some(pb::agent_frame::Frame::Batch(batch)) => {
            let _ = session::check_batch(&batch, "edge-1", 0, &StreamSeries::default(), &limits);
            let mut declared: StreamSeries = (0..4).map(|i| (i, i64::from(i))).collect();
            if let Ok(new) = session::check_batch(&batch, "edge-1", 1, &declared, &limits) {
                assert!(new.iter().all(|(id, _)| !declared.contains_key(id)));
                declared.extend(new.iter().map(|(id, _)| (*id, 100 + i64::from(*id))));
                let columns = batch.columns.as_ref().map_or(0, |c| {
                    c.f64.as_ref().map_or(0, |g| g.values.len())
                        + c.i64.as_ref().map_or(0, |g| g.values.len())
                        + c.bool.as_ref().map_or(0, |g| g.values.len())
                });
                let total = batch.readings.len() + columns;
                assert_eq!(session::batch_readings(batch, &declared).len(), total);
            }
        }
        None => {}
    }
});
