//! Tests of `query.rs`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use super::*;

fn meta() -> SeriesMeta {
    SeriesMeta {
        id: 3,
        key: SeriesKey {
            agent: "a".into(),
            device: "d".into(),
            metric: "m".into(),
            labels: BTreeMap::from([("k".into(), "v".into())]),
            unit: "C".into(),
        },
    }
}

#[test]
fn values_round_trip_through_proto() {
    for value in [
        StoredValue::F64(2.5),
        StoredValue::I64(-4),
        StoredValue::Bool(false),
        StoredValue::Str("x".into()),
        StoredValue::Timeout("slow".into()),
        StoredValue::Error("bad".into()),
    ] {
        let p = Point {
            ts_ns: 5,
            received_ns: 6,
            value,
        };
        assert_eq!(point_from_proto(point_to_proto(p.clone())).unwrap(), p);
    }
    assert_eq!(series_from_proto(series_to_proto(&meta())), meta());
}

#[test]
fn range_request_bounds() {
    let req = |since_ns, until_ns| pb::RangeRequest {
        filter: None,
        since_ns,
        until_ns,
    };
    let (_, span) = range_request(req(0, 0)).unwrap();
    assert_eq!(span, TimeSpan::default());
    let (_, span) = range_request(req(10, 10)).unwrap();
    assert_eq!(span.since_ns, Some(10));
    let err = range_request(req(10, 9)).unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[test]
fn live_state_overrides_stored_and_adds_new_agents() {
    let stored = vec![
        StoredAgent {
            id: "a".into(),
            peer: "old:1".into(),
            collector: "col-b".into(),
            readings_stored: 5,
            ..StoredAgent::default()
        },
        // Streams to another collector sharing the store: this one
        // knew it once (disconnected here), the row names the other.
        StoredAgent {
            id: "c".into(),
            collector: "col-b".into(),
            ..StoredAgent::default()
        },
    ];
    let live = BTreeMap::from([
        (
            "a".to_string(),
            AgentLive {
                connected: true,
                peer: "new:2".into(),
                collector: "col-a".into(),
                ..AgentLive::default()
            },
        ),
        (
            "c".to_string(),
            AgentLive {
                connected: false,
                collector: "col-a".into(),
                ..AgentLive::default()
            },
        ),
        (
            "b".to_string(),
            AgentLive {
                connected: true,
                peer: "b:3".into(),
                ..AgentLive::default()
            },
        ),
    ]);
    let merged = merge_agents(stored, &live);
    assert_eq!(merged.len(), 3);
    assert!(merged[0].connected && merged[0].peer == "new:2" && merged[0].readings_stored == 5);
    assert_eq!(merged[0].collector, "col-a");
    assert!(merged[1].connected && merged[1].id == "b" && merged[1].readings_stored == 0);
    assert!(!merged[2].connected && merged[2].collector == "col-b");
}

#[tokio::test]
async fn tail_filters_and_skips_on_lag() {
    use pb::query_server::Query;
    use tokio_stream::StreamExt;

    let (_live_tx, live) = watch::channel(LiveAgents::default());
    let (tail, _) = broadcast::channel(1);
    let reader = Reader::Sqlite(crate::store::sqlite::SqliteReader::new("/nonexistent"));
    let svc = QueryService::new(reader, live, tail.clone());
    let filter = pb::SeriesFilter {
        device: "d".into(),
        ..Default::default()
    };
    let mut stream = svc.tail(Request::new(filter)).await.unwrap().into_inner();
    let commit = |device: &str, ts: i64| -> Committed {
        let mut m = meta();
        m.key.device = device.into();
        Arc::new(vec![crate::model::CommittedChunk {
            series: Arc::new(m),
            points: vec![Point {
                ts_ns: ts,
                received_ns: ts,
                value: StoredValue::I64(ts),
            }],
        }])
    };
    // Capacity 1: the first two are overwritten (lag), the last survives.
    tail.send(commit("d", 1)).unwrap();
    tail.send(commit("d", 2)).unwrap();
    tail.send(commit("other", 3)).unwrap();
    tail.send(commit("d", 4)).unwrap();
    let got = stream.next().await.unwrap().unwrap();
    assert_eq!(got.points[0].ts_ns, 4);
    assert_eq!(got.series.unwrap().device, "d");
}
