//! `Query/ListExports`: every export's cursor, lag and totals
//! (`export::ExportsView`), and the conversions between
//! `export::ExportRow` and `pb::ExportInfo` (both directions: the
//! `exports` subcommand reads the answer back into rows).

use tonic::{Request, Response, Status};
use tributary_proto::v1 as pb;

use super::{QueryService, read_status};
use crate::export::ExportRow;

impl QueryService {
    pub(super) async fn list_exports_body(
        &self,
        request: Request<pb::ListExportsRequest>,
    ) -> Result<Response<pb::ListExportsResponse>, Status> {
        self.authorize(&request, "ListExports")?;
        let Some(view) = &self.exports else {
            return Ok(Response::new(pb::ListExportsResponse::default()));
        };
        let rows = view
            .list()
            .await
            .map_err(|e| read_status("list exports", &e))?;
        Ok(Response::new(pb::ListExportsResponse {
            exports: rows.into_iter().map(export_to_proto).collect(),
        }))
    }
}

pub fn export_to_proto(r: ExportRow) -> pb::ExportInfo {
    pb::ExportInfo {
        name: r.name,
        kind: r.kind,
        destination: r.destination,
        position: r.position,
        end: r.end,
        lag_readings: r.lag_readings,
        lag_seconds: r.lag_seconds,
        sent: r.sent,
        retried: r.retried,
        dropped: r.dropped,
        skipped: r.skipped,
        last_error: r.last_error.unwrap_or_default(),
    }
}

pub fn export_from_proto(e: pb::ExportInfo) -> ExportRow {
    ExportRow {
        name: e.name,
        kind: e.kind,
        destination: e.destination,
        position: e.position,
        end: e.end,
        lag_readings: e.lag_readings,
        lag_seconds: e.lag_seconds,
        sent: e.sent,
        retried: e.retried,
        dropped: e.dropped,
        skipped: e.skipped,
        last_error: (!e.last_error.is_empty()).then_some(e.last_error),
    }
}
