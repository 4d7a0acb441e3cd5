//! The ingest protocol against an in-process collector on port 0, driven by
//! a raw gRPC client: Welcome, acks after commit, dedup of replays, and the
//! precise INVALID_ARGUMENT for each kind of bad frame (with nothing of the
//! bad batch stored and other agents unaffected).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use tributary_collector::server::{self, ServerConfig};
use tributary_proto::v1 as pb;
use tributary_tests::cluster;
use tributary_tests::process::TestDir;

/// An in-process collector; dropping `stop` shuts it down.
struct Collector {
    _dir: Option<TestDir>,
    url: String,
    db: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start(name: &str) -> Result<Self> {
        let dir = TestDir::new(name)?;
        let mut c = Self::start_at(dir.join("collector.db")).await?;
        c._dir = Some(dir);
        Ok(c)
    }

    async fn start_at(db: PathBuf) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        let config = ServerConfig::new(db.clone());
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = server::run(listener, config, shutdown).await {
                panic!("collector failed: {e}");
            }
        });
        Ok(Collector {
            _dir: None,
            url,
            db,
            stop: Some(stop),
            task,
        })
    }

    /// Stops the collector; returns its directory so the database can be
    /// reopened.
    async fn stop(mut self) -> Result<Option<TestDir>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await?;
        Ok(self._dir.take())
    }

    fn count_readings(&self) -> Result<i64> {
        Ok(cluster::stored_count(&self.db, "")? as i64)
    }

    /// Counter values of every counter series of `agent`, by device time.
    fn counter_values(&self, agent: &str) -> Result<Vec<i64>> {
        let mut points: Vec<_> = cluster::stored_points(&self.db, agent, "", "counter")?
            .into_iter()
            .flat_map(|(_, p)| p)
            .collect();
        points.sort_by_key(|p| p.ts_ns);
        points
            .iter()
            .map(|p| cluster::stored_int(&p.value))
            .collect()
    }
}

/// A raw agent stream.
struct RawStream {
    tx: mpsc::Sender<pb::AgentFrame>,
    rx: Streaming<pb::CollectorFrame>,
    welcome: u64,
    /// The Welcome's committed drop count.
    welcome_dropped: Option<u64>,
    /// The Welcome's committed ranges, as (first, last).
    welcome_ranges: Vec<(u64, u64)>,
    /// The Welcome says batches may come in any order.
    out_of_order: bool,
}

impl RawStream {
    async fn open(url: &str, agent: &str, epoch: u64) -> Result<Self> {
        Self::open_with(url, hello(agent, epoch)).await
    }

    /// A stream whose Hello says it reads ranges and may send out of order.
    async fn open_out_of_order(url: &str, agent: &str, epoch: u64) -> Result<Self> {
        let mut h = hello(agent, epoch);
        if let Some(pb::agent_frame::Frame::Hello(h)) = &mut h.frame {
            h.out_of_order = true;
        }
        Self::open_with(url, h).await
    }

    async fn open_with(url: &str, hello: pb::AgentFrame) -> Result<Self> {
        let mut client = pb::ingest_client::IngestClient::connect(url.to_string()).await?;
        let (tx, rx) = mpsc::channel(16);
        tx.send(hello).await?;
        let mut rx = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        let w = match next(&mut rx).await? {
            Some(pb::collector_frame::Frame::Welcome(w)) => w,
            other => bail!("expected welcome, got {other:?}"),
        };
        Ok(RawStream {
            tx,
            rx,
            welcome: w.committed_seq,
            welcome_dropped: w.committed_dropped,
            welcome_ranges: pairs(&w.committed_ranges),
            out_of_order: w.out_of_order,
        })
    }

    async fn send(&self, frame: pb::AgentFrame) -> Result<()> {
        self.tx.send(frame).await.context("stream closed")
    }

    /// Waits for an ack covering `seq`.
    async fn acked(&mut self, seq: u64) -> Result<u64> {
        loop {
            match next(&mut self.rx).await? {
                Some(pb::collector_frame::Frame::Ack(a)) if a.seq >= seq => return Ok(a.seq),
                Some(_) => continue,
                None => bail!("stream ended before ack {seq}"),
            }
        }
    }

    /// Batches `seqs`, one counter value each (equal to the sequence), the
    /// first declaring the series.
    async fn send_counters(&self, seqs: std::ops::RangeInclusive<u64>) -> Result<()> {
        let first = *seqs.start();
        for seq in seqs {
            let v = seq as i64;
            self.send(counter_batch(seq, seq == first, v, v)).await?;
        }
        Ok(())
    }

    /// The next frame, which must be an Ack: its sequence and ranges,
    /// checked to be well-formed (ascending, disjoint, none touching
    /// another or the sequence).
    async fn next_ack_set(&mut self) -> Result<(u64, Vec<(u64, u64)>)> {
        match next(&mut self.rx).await? {
            Some(pb::collector_frame::Frame::Ack(a)) => {
                let ranges = pairs(&a.ranges);
                let mut prev = a.seq;
                for &(first, last) in &ranges {
                    if first <= prev + 1 || last < first {
                        bail!("malformed ack: {} {ranges:?}", a.seq);
                    }
                    prev = last;
                }
                Ok((a.seq, ranges))
            }
            other => bail!("expected an ack, got {other:?}"),
        }
    }

    /// The next frame, which must be an Ack: its sequence.
    async fn next_ack(&mut self) -> Result<u64> {
        match next(&mut self.rx).await? {
            Some(pb::collector_frame::Frame::Ack(a)) => Ok(a.seq),
            other => bail!("expected an ack, got {other:?}"),
        }
    }

    /// Half-closes the stream and reads it to its end, which must be OK:
    /// the sequences of the Ack frames that came first.
    async fn finish(self) -> Result<Vec<u64>> {
        let RawStream { tx, mut rx, .. } = self;
        drop(tx);
        let mut acks = Vec::new();
        loop {
            match next(&mut rx).await? {
                Some(pb::collector_frame::Frame::Ack(a)) => acks.push(a.seq),
                Some(other) => bail!("expected an ack or the end, got {other:?}"),
                None => return Ok(acks),
            }
        }
    }

    /// Waits for the stream to end with an error status.
    async fn status(&mut self) -> Result<tonic::Status> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.rx.next()).await? {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Ok(status),
                None => bail!("stream ended without a status"),
            }
        }
    }
}

/// Wire ranges as (first, last) pairs.
fn pairs(ranges: &[pb::SeqRange]) -> Vec<(u64, u64)> {
    ranges.iter().map(|r| (r.first, r.last)).collect()
}

/// The sequences an ack (or Welcome) says are committed, up to `top`.
fn acked_set(seq: u64, ranges: &[(u64, u64)], top: u64) -> std::collections::BTreeSet<u64> {
    (1..=seq.min(top))
        .chain(ranges.iter().flat_map(|&(f, l)| f..=l.min(top)))
        .collect()
}

async fn next(
    rx: &mut Streaming<pb::CollectorFrame>,
) -> Result<Option<pb::collector_frame::Frame>> {
    match tokio::time::timeout(Duration::from_secs(10), rx.next()).await? {
        Some(Ok(f)) => Ok(f.frame),
        Some(Err(s)) => bail!("stream failed: {s}"),
        None => Ok(None),
    }
}

fn hello(agent: &str, epoch: u64) -> pb::AgentFrame {
    pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Hello(pb::Hello {
            agent_id: agent.into(),
            version: "test".into(),
            epoch,
            agent_time_ns: 1,
            dropped: 0,
            last_seq: 0,
            out_of_order: false,
        })),
    }
}

fn decl(id: u32, device: &str, metric: &str) -> pb::SeriesDecl {
    pb::SeriesDecl {
        id,
        device: device.into(),
        metric: metric.into(),
        labels: HashMap::new(),
        unit: String::new(),
    }
}

fn reading(series: u32, ts_ns: i64, v: i64) -> pb::Reading {
    pb::Reading {
        series,
        ts_ns,
        value: Some(pb::reading::Value::I64(v)),
    }
}

fn batch(seq: u64, series: Vec<pb::SeriesDecl>, readings: Vec<pb::Reading>) -> pb::AgentFrame {
    columnar(seq, series, readings, pb::Columns::default())
}

/// A batch with readings in both forms.
fn columnar(
    seq: u64,
    series: Vec<pb::SeriesDecl>,
    readings: Vec<pb::Reading>,
    columns: pb::Columns,
) -> pb::AgentFrame {
    pb::AgentFrame {
        frame: Some(pb::agent_frame::Frame::Batch(pb::Batch {
            seq,
            series,
            readings,
            dropped: 0,
            resent: false,
            last_seq: seq,
            columns: Some(columns),
            oldest_spooled: 0,
        })),
    }
}

/// `(series_delta, ts_delta)` columns of `(series id, ts_ns)` pairs, the
/// timestamps relative to `base`.
fn deltas(keys: &[(u32, i64)], base: i64) -> (Vec<i64>, Vec<i64>) {
    let mut prev = (0i64, base);
    keys.iter()
        .map(|&(id, ts)| {
            let d = (i64::from(id) - prev.0, ts - prev.1);
            prev = (i64::from(id), ts);
            d
        })
        .unzip()
}

fn f64_columns(base_ts_ns: i64, readings: &[(u32, i64, f64)]) -> pb::FloatColumns {
    let keys: Vec<_> = readings.iter().map(|r| (r.0, r.1)).collect();
    let (series_delta, ts_delta) = deltas(&keys, base_ts_ns);
    pb::FloatColumns {
        series_delta,
        base_ts_ns,
        ts_delta,
        values: readings.iter().map(|r| r.2).collect(),
    }
}

fn i64_columns(base_ts_ns: i64, readings: &[(u32, i64, i64)]) -> pb::IntColumns {
    let keys: Vec<_> = readings.iter().map(|r| (r.0, r.1)).collect();
    let (series_delta, ts_delta) = deltas(&keys, base_ts_ns);
    pb::IntColumns {
        series_delta,
        base_ts_ns,
        ts_delta,
        values: readings.iter().map(|r| r.2).collect(),
    }
}

/// Counter values `from..=to` of series 1 as one batch.
fn counter_batch(seq: u64, declare: bool, from: i64, to: i64) -> pb::AgentFrame {
    let series = if declare {
        vec![decl(1, "dev", "counter")]
    } else {
        vec![]
    };
    batch(
        seq,
        series,
        (from..=to).map(|v| reading(1, 1_000 + v, v)).collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_batches_are_acked_and_not_stored_twice() -> Result<()> {
    let collector = Collector::start("replay").await?;
    let mut s = RawStream::open(&collector.url, "edge-1", 7).await?;
    assert_eq!(s.welcome, 0, "a new epoch starts at 0");
    s.send(counter_batch(1, true, 1, 10)).await?;
    s.send(counter_batch(2, false, 11, 20)).await?;
    assert_eq!(s.acked(2).await?, 2);
    drop(s);

    // A new stream of the same epoch is told what is committed and may
    // resend it anyway (a lost ack): acked again, stored once.
    let mut s = RawStream::open(&collector.url, "edge-1", 7).await?;
    assert_eq!(s.welcome, 2);
    s.send(counter_batch(1, true, 1, 10)).await?;
    s.send(counter_batch(2, false, 11, 20)).await?;
    s.send(counter_batch(3, false, 21, 30)).await?;
    assert_eq!(s.acked(3).await?, 3);
    drop(s);

    // Another epoch of the same agent starts again at sequence 1.
    let mut s = RawStream::open(&collector.url, "edge-1", 8).await?;
    assert_eq!(s.welcome, 0);
    s.send(counter_batch(1, true, 31, 35)).await?;
    assert_eq!(s.acked(1).await?, 1);
    drop(s);

    assert_eq!(
        collector.counter_values("edge-1")?,
        (1..=35).collect::<Vec<_>>()
    );
    let db = collector.db.clone();
    let _dir = collector.stop().await?;

    // After a restart the committed sequence is still known.
    let collector = Collector::start_at(db).await?;
    let s = RawStream::open(&collector.url, "edge-1", 7).await?;
    assert_eq!(s.welcome, 3);
    drop(s);
    collector.stop().await?;
    Ok(())
}

/// A client that is not the project's agent, doing what README and
/// ARCHITECTURE promise works: it reconnects, reads the Welcome, resends
/// what the Welcome covers, and waits for an ack that covers it. Every
/// replayed batch gets an Ack frame of its own carrying the committed
/// sequence (which does not rise), on an open stream and on one that only
/// resends and then ends; nothing is stored twice.
/// The Welcome carries the drop count the store holds, which a resend with
/// a higher count raises only once it is committed (the agent's rollover
/// carries what no Welcome or Ack confirmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_welcome_carries_the_committed_drop_count() -> Result<()> {
    let collector = Collector::start("welcome-drops").await?;
    let with_drops = |frame: pb::AgentFrame, dropped: u64| match frame.frame {
        Some(pb::agent_frame::Frame::Batch(mut b)) => {
            b.dropped = dropped;
            pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::Batch(b)),
            }
        }
        other => panic!("not a batch: {other:?}"),
    };
    let mut s = RawStream::open(&collector.url, "edge-d", 3).await?;
    assert_eq!((s.welcome, s.welcome_dropped), (0, Some(0)));
    s.send(with_drops(counter_batch(1, true, 1, 10), 2)).await?;
    assert_eq!(s.acked(1).await?, 1);
    drop(s);
    let mut s = RawStream::open(&collector.url, "edge-d", 3).await?;
    assert_eq!((s.welcome, s.welcome_dropped), (1, Some(2)));
    // Batch 1 resent with the agent's newer count: acked, and its count
    // committed before the ack.
    s.send(with_drops(counter_batch(1, true, 1, 10), 5)).await?;
    assert_eq!(s.acked(1).await?, 1);
    drop(s);
    let s = RawStream::open(&collector.url, "edge-d", 3).await?;
    assert_eq!((s.welcome, s.welcome_dropped), (1, Some(5)));
    drop(s);
    assert_eq!(collector.count_readings()?, 10, "stored once");
    collector.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replayed_batch_gets_its_own_ack() -> Result<()> {
    let collector = Collector::start("replay-acks").await?;
    let mut s = RawStream::open(&collector.url, "foreign", 3).await?;
    assert_eq!(s.welcome, 0);
    s.send_counters(1..=200).await?;
    assert_eq!(s.acked(200).await?, 200);
    drop(s);

    // Reconnect, read Welcome { committed_seq: 200 }, resend 150..=200 and
    // wait for Ack >= 200 with the stream open: the first replay's ack,
    // then one more for each other replay, each Ack(200).
    let mut s = RawStream::open(&collector.url, "foreign", 3).await?;
    assert_eq!(s.welcome, 200);
    s.send_counters(150..=200).await?;
    assert_eq!(s.acked(200).await?, 200);
    for _ in 151..=200 {
        assert_eq!(s.next_ack().await?, 200);
    }
    // Nothing else is owed: the stream ends OK without another frame.
    assert_eq!(s.finish().await?, Vec::<u64>::new());

    // A stream that only resends, then half-closes at once: an Ack for
    // each replay before it ends OK.
    let s = RawStream::open(&collector.url, "foreign", 3).await?;
    assert_eq!(s.welcome, 200);
    s.send_counters(190..=200).await?;
    assert_eq!(s.finish().await?, vec![200; 11]);

    // One replay and then a new batch: the replay's ack, then the new one.
    let mut s = RawStream::open(&collector.url, "foreign", 3).await?;
    s.send(counter_batch(200, true, 200, 200)).await?;
    assert_eq!(s.next_ack().await?, 200);
    s.send(counter_batch(201, false, 201, 201)).await?;
    assert_eq!(s.next_ack().await?, 201);
    assert_eq!(s.finish().await?, Vec::<u64>::new());

    assert_eq!(
        collector.counter_values("foreign")?,
        (1..=201).collect::<Vec<_>>()
    );
    collector.stop().await?;
    Ok(())
}

/// Out-of-order delivery as a client other than the project's agent sees
/// it: the Welcome says `out_of_order`; batches sent in any order are each
/// acked once committed, every Ack carrying the whole committed set (mark
/// plus ranges, only growing); after a restart of the collector the
/// Welcome lists the ranges from the store; resending everything stores
/// nothing twice (each replay acked), and the mark then rises through the
/// ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_batches_are_acked_with_ranges_and_stored_once() -> Result<()> {
    let collector = Collector::start("ooo").await?;
    let mut s = RawStream::open_out_of_order(&collector.url, "ooo", 5).await?;
    assert!(s.out_of_order, "this collector takes batches in any order");
    assert_eq!((s.welcome, &s.welcome_ranges[..]), (0, &[][..]));
    let sent = [10u64, 9, 3, 4];
    for (i, &seq) in sent.iter().enumerate() {
        let v = seq as i64;
        s.send(counter_batch(seq, i == 0, v, v)).await?;
    }
    // Acks coalesce; each is the whole set, never more than was sent, and
    // never shrinking; the last one holds all four.
    let truth: std::collections::BTreeSet<u64> = sent.into_iter().collect();
    let mut seen = std::collections::BTreeSet::new();
    while seen != truth {
        let (seq, ranges) = s.next_ack_set().await?;
        let now = acked_set(seq, &ranges, 100);
        assert!(
            now.is_subset(&truth),
            "acked what was not sent: {seq} {ranges:?}"
        );
        assert!(seen.is_subset(&now), "an ack shrank: {seq} {ranges:?}");
        seen = now;
    }
    drop(s);
    let db = collector.db.clone();
    let dir = collector.stop().await?;

    // The ranges are in the store: a restarted collector's Welcome has them.
    let collector = Collector::start_at(db.clone()).await?;
    let mut s = RawStream::open_out_of_order(&collector.url, "ooo", 5).await?;
    assert_eq!(
        (s.welcome, &s.welcome_ranges[..]),
        (0, &[(3, 4), (9, 10)][..])
    );
    // A client that ignores them and resends everything, newest first (so
    // 10, 9, 4 and 3 come while the mark is still below them): the four
    // replays are acked (a frame each), the rest stored; the mark rises
    // through the ranges to 12.
    for seq in (1..=12u64).rev() {
        let v = seq as i64;
        s.send(counter_batch(seq, seq == 12, v, v)).await?;
    }
    loop {
        let (seq, ranges) = s.next_ack_set().await?;
        if seq == 12 {
            assert!(ranges.is_empty());
            break;
        }
    }
    drop(s);
    assert_eq!(
        collector.counter_values("ooo")?,
        (1..=12).collect::<Vec<_>>(),
        "every sequence stored once"
    );
    let s = RawStream::open_out_of_order(&collector.url, "ooo", 5).await?;
    assert_eq!((s.welcome, &s.welcome_ranges[..]), (12, &[][..]));
    drop(s);
    collector.stop().await?;
    drop(dir);
    Ok(())
}

/// An agent whose Hello does not say `out_of_order` (every agent before
/// it existed) is welcomed without it and sends in sequence order, each
/// batch standing for every sequence below it: a spool that resumed above
/// its reservation after a restart skips thousands of numbers, and the
/// acks (only their sequence is read by such an agent) rise past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_order_agent_is_acked_past_the_sequences_it_skipped() -> Result<()> {
    let collector = Collector::start("in-order-gaps").await?;
    let mut s = RawStream::open(&collector.url, "old", 2).await?;
    assert!(!s.out_of_order, "not said to an agent that did not ask");
    s.send(counter_batch(1, true, 1, 1)).await?;
    s.send(counter_batch(2, false, 2, 2)).await?;
    assert_eq!(s.acked(2).await?, 2);
    drop(s);
    // Restarted: its spool resumes at 4097, and it never sends 3..=4096.
    let mut s = RawStream::open(&collector.url, "old", 2).await?;
    assert_eq!((s.welcome, &s.welcome_ranges[..]), (2, &[][..]));
    s.send(counter_batch(4097, true, 3, 3)).await?;
    s.send(counter_batch(4098, false, 4, 4)).await?;
    // Acks coalesce: the last one says 4098, none has ranges.
    loop {
        let (seq, ranges) = s.next_ack_set().await?;
        assert!(
            ranges.is_empty() && (4097..=4098).contains(&seq),
            "{seq} {ranges:?}"
        );
        if seq == 4098 {
            break;
        }
    }
    // Still in order: a lower sequence on the stream is refused.
    s.send(counter_batch(7, false, 7, 7)).await?;
    let status = s.status().await?;
    assert!(status.message().contains("batch.seq"), "{status:?}");
    let s = RawStream::open(&collector.url, "old", 2).await?;
    assert_eq!((s.welcome, &s.welcome_ranges[..]), (4098, &[][..]));
    drop(s);
    assert_eq!(collector.counter_values("old")?, vec![1, 2, 3, 4]);
    collector.stop().await?;
    Ok(())
}

/// Sequences an out-of-order agent says it will never send (below its
/// batches' `oldest_spooled`: acked, dropped, or skipped by its spool after
/// a restart) close the holes they left, so the mark catches up; a floor
/// above the batch's own sequence is refused; a replay's floor changes
/// nothing (only batches stored or found stored carry it to the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oldest_spooled_closes_the_holes_below_it() -> Result<()> {
    let collector = Collector::start("ooo-floor").await?;
    let with_floor = |frame: pb::AgentFrame, floor: u64| match frame.frame {
        Some(pb::agent_frame::Frame::Batch(mut b)) => {
            b.oldest_spooled = floor;
            pb::AgentFrame {
                frame: Some(pb::agent_frame::Frame::Batch(b)),
            }
        }
        other => panic!("not a batch: {other:?}"),
    };
    let mut s = RawStream::open_out_of_order(&collector.url, "floor", 4).await?;
    s.send(counter_batch(5, true, 5, 5)).await?;
    s.send(counter_batch(7, false, 7, 7)).await?;
    loop {
        if s.next_ack_set().await? == (0, vec![(5, 5), (7, 7)]) {
            break;
        }
    }
    // A replay of 7 saying 1..=6 are gone: acked, the set unchanged.
    s.send(with_floor(counter_batch(7, false, 7, 7), 7)).await?;
    assert_eq!(s.next_ack_set().await?, (0, vec![(5, 5), (7, 7)]));
    // Batch 9 says everything below 7 will never come: 1..=6 close, the
    // mark rises through 7.
    s.send(with_floor(counter_batch(9, false, 9, 9), 7)).await?;
    assert_eq!(s.next_ack_set().await?, (7, vec![(9, 9)]));
    // A floor above the batch's own sequence is a broken agent.
    s.send(with_floor(counter_batch(11, false, 11, 11), 12))
        .await?;
    let status = s.status().await?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("batch.oldest_spooled"),
        "{status:?}"
    );
    let s = RawStream::open_out_of_order(&collector.url, "floor", 4).await?;
    assert_eq!((s.welcome, &s.welcome_ranges[..]), (7, &[(9, 9)][..]));
    drop(s);
    assert_eq!(collector.counter_values("floor")?, vec![5, 7, 9]);
    collector.stop().await?;
    Ok(())
}

/// A Welcome lists the lowest `MAX_ACK_RANGES` ranges; a batch in a range
/// it leaves out is sent again and deduplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_lists_the_lowest_ranges_and_the_rest_dedup() -> Result<()> {
    let max = tributary_proto::limits::MAX_ACK_RANGES as u64;
    let collector = Collector::start("ooo-many").await?;
    let mut s = RawStream::open_out_of_order(&collector.url, "many", 1).await?;
    // Every even sequence: as many one-batch ranges, a few more than fit.
    let top = 2 * (max + 6);
    for seq in (2..=top).step_by(2) {
        let v = seq as i64;
        s.send(counter_batch(seq, seq == 2, v, v)).await?;
    }
    loop {
        let (seq, ranges) = s.next_ack_set().await?;
        assert_eq!(seq, 0);
        assert!(
            ranges.len() as u64 <= max,
            "an ack lists at most {max} ranges"
        );
        if ranges.len() as u64 == max {
            break;
        }
    }
    s.finish().await?;
    let mut s = RawStream::open_out_of_order(&collector.url, "many", 1).await?;
    assert_eq!(s.welcome, 0);
    let expected: Vec<(u64, u64)> = (1..=max).map(|i| (2 * i, 2 * i)).collect();
    assert_eq!(s.welcome_ranges, expected, "the lowest {max}");
    // The last range, not listed: sent again, acked, not stored again.
    s.send(counter_batch(top, true, top as i64, top as i64))
        .await?;
    let (seq, ranges) = s.next_ack_set().await?;
    assert_eq!((seq, ranges.len() as u64), (0, max));
    s.finish().await?;
    assert_eq!(
        collector.counter_values("many")?,
        (2..=top as i64).step_by(2).collect::<Vec<_>>()
    );
    collector.stop().await?;
    Ok(())
}

/// An epoch holds at most `MAX_COMMITTED_RANGES` ranges: a batch that
/// would open one more is refused with RESOURCE_EXHAUSTED naming the
/// agent, the epoch and the bound (nothing of it stored); one that extends
/// or joins ranges is taken as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_the_range_bound_is_refused() -> Result<()> {
    let cap = tributary_proto::limits::MAX_COMMITTED_RANGES as u64;
    let collector = Collector::start("ooo-cap").await?;
    let mut s = RawStream::open_out_of_order(&collector.url, "cap", 3).await?;
    // Every even sequence up to 2 * cap: exactly `cap` ranges.
    let top = 2 * cap;
    for seq in (2..=top).step_by(2) {
        let v = seq as i64;
        s.send(counter_batch(seq, seq == 2, v, v)).await?;
    }
    // One more range: refused.
    s.send(counter_batch(top + 2, false, 0, 0)).await?;
    let status = s.status().await?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let m = status.message();
    assert!(
        m.contains("agent \"cap\", epoch 3") && m.contains(&format!("{cap} ranges")),
        "{m}"
    );
    // Extending the top range and joining the lowest two are taken; then
    // there is room for one new range.
    let mut s = RawStream::open_out_of_order(&collector.url, "cap", 3).await?;
    assert_eq!(s.welcome, 0);
    for seq in [top + 1, 3, top + 4] {
        let v = seq as i64;
        s.send(counter_batch(seq, seq == top + 1, v, v)).await?;
    }
    loop {
        let (mark, ranges) = s.next_ack_set().await?;
        assert_eq!(mark, 0);
        if ranges.first() == Some(&(2, 4)) {
            break;
        }
    }
    s.send(counter_batch(top + 6, false, 0, 0)).await?;
    let status = s.status().await?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let mut expected: Vec<i64> = (2..=top as i64).step_by(2).collect();
    expected.extend([top as i64 + 1, 3, top as i64 + 4]);
    expected.sort_unstable();
    let mut stored = collector.counter_values("cap")?;
    stored.sort_unstable();
    assert_eq!(stored, expected, "nothing of the refused batches stored");
    collector.stop().await?;
    Ok(())
}

/// Each bad frame ends its stream with INVALID_ARGUMENT naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_are_rejected_with_the_field_named() -> Result<()> {
    let collector = Collector::start("bad-frames").await?;
    // A well-behaved agent streams throughout.
    let mut good = RawStream::open(&collector.url, "good", 1).await?;
    good.send(counter_batch(1, true, 1, 5)).await?;
    good.acked(1).await?;

    let cases: Vec<(&str, Vec<pb::AgentFrame>, &str)> = vec![
        ("seq zero", vec![counter_batch(0, true, 1, 1)], "batch.seq"),
        (
            // An in-order stream (no out_of_order in its Hello): the same
            // sequence twice.
            "seq not increasing",
            vec![counter_batch(5, true, 1, 1), counter_batch(5, false, 2, 2)],
            "batch.seq: 5 does not increase (previous 5)",
        ),
        (
            "undeclared series",
            vec![batch(1, vec![], vec![reading(9, 1_000, 1)])],
            "batch.readings[0].series",
        ),
        (
            "timestamp before 1970",
            vec![batch(1, vec![decl(1, "d", "m")], vec![reading(1, -5, 1)])],
            "batch.readings[0].ts_ns",
        ),
        (
            "oversized string",
            vec![batch(
                1,
                vec![decl(1, "d", "m")],
                vec![pb::Reading {
                    series: 1,
                    ts_ns: 1_000,
                    value: Some(pb::reading::Value::Str("x".repeat(100_000))),
                }],
            )],
            "batch.readings[0].str",
        ),
        (
            "oversized device name",
            vec![batch(
                1,
                vec![decl(1, &"d".repeat(10_000), "m")],
                vec![reading(1, 1_000, 1)],
            )],
            "batch.series[0].device",
        ),
        (
            "missing value",
            vec![batch(
                1,
                vec![decl(1, "d", "m")],
                vec![pb::Reading {
                    series: 1,
                    ts_ns: 1_000,
                    value: None,
                }],
            )],
            "batch.readings[0].value",
        ),
        (
            "columns: fewer values than series ids",
            vec![columnar(
                1,
                vec![decl(1, "d", "m")],
                vec![],
                pb::Columns {
                    f64: Some(pb::FloatColumns {
                        values: vec![1.0, 2.0, 3.0],
                        ..f64_columns(1_000, &[(1, 1_000, 0.0); 4])
                    }),
                    ..Default::default()
                },
            )],
            "batch.columns.f64: 3 values for 4 series ids",
        ),
        (
            "columns: fewer timestamps than series ids",
            vec![columnar(
                1,
                vec![decl(1, "d", "m")],
                vec![],
                pb::Columns {
                    i64: Some(pb::IntColumns {
                        ts_delta: vec![0],
                        ..i64_columns(1_000, &[(1, 1_000, 5), (1, 2_000, 6)])
                    }),
                    ..Default::default()
                },
            )],
            "batch.columns.i64: 1 timestamps for 2 series ids",
        ),
        (
            "columns: undeclared series id",
            vec![columnar(
                1,
                vec![decl(1, "d", "m")],
                vec![],
                pb::Columns {
                    f64: Some(f64_columns(1_000, &[(1, 1_000, 1.0), (9, 1_000, 2.0)])),
                    ..Default::default()
                },
            )],
            "batch.columns.f64.series_delta[1]: series 9 was never declared",
        ),
        (
            "columns: series id below 0",
            vec![columnar(
                1,
                vec![decl(1, "d", "m")],
                vec![],
                pb::Columns {
                    bool: Some(pb::BoolColumns {
                        series_delta: vec![-1],
                        base_ts_ns: 1_000,
                        ts_delta: vec![0],
                        values: vec![true],
                    }),
                    ..Default::default()
                },
            )],
            "batch.columns.bool.series_delta[0]",
        ),
        (
            "columns: timestamp overflows",
            vec![columnar(
                1,
                vec![decl(1, "d", "m")],
                vec![],
                pb::Columns {
                    f64: Some(pb::FloatColumns {
                        series_delta: vec![1, 0],
                        base_ts_ns: i64::MAX - 10,
                        ts_delta: vec![0, 11],
                        values: vec![1.0, 2.0],
                    }),
                    ..Default::default()
                },
            )],
            "batch.columns.f64.ts_delta[1]: 11 after 9223372036854775797 overflows",
        ),
        (
            "columns: timestamp before 1970",
            vec![columnar(
                1,
                vec![decl(1, "d", "m")],
                vec![],
                pb::Columns {
                    i64: Some(i64_columns(1_000, &[(1, 1_000, 1), (1, -5, 2)])),
                    ..Default::default()
                },
            )],
            "batch.columns.i64.ts_delta[1]: ts_ns -5 is not a time after 1970",
        ),
        (
            "rows and columns together over the reading limit",
            vec![columnar(
                1,
                vec![decl(1, "d", "m")],
                (0..50_001).map(|i| reading(1, 1_000 + i, i)).collect(),
                pb::Columns {
                    f64: Some(pb::FloatColumns {
                        series_delta: vec![1; 50_000],
                        base_ts_ns: 1_000,
                        ts_delta: vec![1; 50_000],
                        values: vec![0.5; 50_000],
                    }),
                    ..Default::default()
                },
            )],
            "batch.readings: 100001 readings (50001 rows, 50000 in columns), more than the limit of 100000",
        ),
    ];
    for (i, (what, frames, field)) in cases.into_iter().enumerate() {
        let agent = format!("bad-{i}");
        let mut s = RawStream::open(&collector.url, &agent, 1).await?;
        let before = collector.count_readings()?;
        for f in frames {
            // The stream may already be closed by the collector.
            let _ = s.send(f).await;
        }
        let status = s.status().await?;
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        assert!(
            status.message().contains(field),
            "{what}: message {:?} should name {field}",
            status.message()
        );
        // Only an earlier valid batch of the same stream may be stored.
        let stored = collector.counter_values(&agent)?;
        assert!(stored.len() <= 1, "{what}: stored {stored:?}");
        assert!(collector.count_readings()? <= before + 1, "{what}");
    }

    // Batch before Hello.
    let mut client = pb::ingest_client::IngestClient::connect(collector.url.clone()).await?;
    let (tx, rx) = mpsc::channel(4);
    tx.send(counter_batch(1, true, 1, 1)).await?;
    let result = client.stream(ReceiverStream::new(rx)).await;
    let status = match result {
        Err(s) => s,
        Ok(resp) => {
            let mut rx = resp.into_inner();
            loop {
                match rx.next().await {
                    Some(Err(s)) => break s,
                    Some(Ok(_)) => continue,
                    None => bail!("stream ended without status"),
                }
            }
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("before hello"), "{status:?}");

    // The good agent was never disturbed.
    good.send(counter_batch(2, false, 6, 10)).await?;
    good.acked(2).await?;
    assert_eq!(
        collector.counter_values("good")?,
        (1..=10).collect::<Vec<_>>()
    );
    drop(good);
    collector.stop().await?;
    Ok(())
}

/// Columnar batches, mixed with rows, store exactly the readings they
/// carry: every value kind, ids out of order (negative deltas), readings of
/// a poll sharing one timestamp, extreme values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columnar_batches_store_exactly_what_they_carry() -> Result<()> {
    let collector = Collector::start("columnar").await?;
    let mut s = RawStream::open(&collector.url, "col", 1).await?;
    let t = 1_700_000_000_000_000_000i64;
    let series = vec![
        decl(1, "dev", "temp"),
        decl(5, "dev", "volts"),
        decl(2, "dev", "count"),
        decl(3, "dev", "on"),
        decl(4, "dev", "state"),
        decl(6, "dev", "octets"),
    ];
    s.send(columnar(
        1,
        series,
        vec![pb::Reading {
            series: 4,
            ts_ns: t + 7,
            value: Some(pb::reading::Value::Str("idle".into())),
        }],
        pb::Columns {
            f64: Some(f64_columns(
                t,
                &[
                    (1, t, 21.5),
                    (5, t, 230.25),
                    (1, t + 1_000_000_000, -0.125),
                    (5, t + 1_000_000_000, f64::MAX),
                ],
            )),
            i64: Some(i64_columns(
                t + 3,
                &[(2, t + 5, -7), (2, t + 1_000_000_005, i64::MAX)],
            )),
            bool: Some(pb::BoolColumns {
                series_delta: vec![3],
                base_ts_ns: t,
                ts_delta: vec![9],
                values: vec![true],
            }),
            u64: Some(pb::UintColumns {
                series_delta: vec![6, 0],
                base_ts_ns: t,
                ts_delta: vec![11, 1_000_000_000],
                values: vec![u64::MAX, (1 << 63) + 1],
            }),
        },
    ))
    .await?;
    // The next batch declares nothing and mixes both forms for one series.
    s.send(columnar(
        2,
        vec![],
        vec![
            reading(2, t + 2_000_000_005, 8),
            pb::Reading {
                series: 6,
                ts_ns: t + 2_000_000_011,
                value: Some(pb::reading::Value::U64(0)),
            },
        ],
        pb::Columns {
            f64: Some(f64_columns(
                t + 2_000_000_000,
                &[(5, t + 2_000_000_000, 0.0)],
            )),
            i64: Some(i64_columns(0, &[])),
            ..Default::default()
        },
    ))
    .await?;
    assert_eq!(s.acked(2).await?, 2);
    drop(s);

    use tributary_collector::model::StoredValue as V;
    let mut stored: Vec<(String, i64, V)> = cluster::stored_points(&collector.db, "col", "", "")?
        .into_iter()
        .flat_map(|(meta, points)| {
            points
                .into_iter()
                .map(move |p| (meta.key.metric.clone(), p.ts_ns, p.value))
        })
        .collect();
    stored.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let expected = vec![
        ("count".to_owned(), t + 5, V::I64(-7)),
        ("count".to_owned(), t + 1_000_000_005, V::I64(i64::MAX)),
        ("count".to_owned(), t + 2_000_000_005, V::I64(8)),
        ("octets".to_owned(), t + 11, V::U64(u64::MAX)),
        (
            "octets".to_owned(),
            t + 1_000_000_011,
            V::U64((1 << 63) + 1),
        ),
        ("octets".to_owned(), t + 2_000_000_011, V::U64(0)),
        ("on".to_owned(), t + 9, V::Bool(true)),
        ("state".to_owned(), t + 7, V::Str("idle".into())),
        ("temp".to_owned(), t, V::F64(21.5)),
        ("temp".to_owned(), t + 1_000_000_000, V::F64(-0.125)),
        ("volts".to_owned(), t, V::F64(230.25)),
        ("volts".to_owned(), t + 1_000_000_000, V::F64(f64::MAX)),
        ("volts".to_owned(), t + 2_000_000_000, V::F64(0.0)),
    ];
    assert_eq!(stored, expected);
    collector.stop().await?;
    Ok(())
}
