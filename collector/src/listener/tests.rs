//! Unit tests of the listener: limits read from /proc, the guard's
//! deadlines on an in-memory stream, the per-address table, the counters.

use super::*;

#[test]
fn open_files_limit_is_read_from_proc_limits() {
    let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                Max processes             95043                95043                processes \n\
                Max open files            20000                524288               files     \n";
    assert_eq!(open_files_limit(text), Some(20_000));
    assert_eq!(
        open_files_limit(
            "Max open files            unlimited            unlimited            files\n"
        ),
        Some(u64::MAX)
    );
    assert_eq!(open_files_limit("Max processes 1 1 processes\n"), None);
    assert_eq!(
        open_files_limit("Max open files  lots  lots  files\n"),
        None
    );
}

#[test]
fn default_connection_cap_stays_within_bounds() {
    let n = default_max_connections();
    assert!((64..=16_384).contains(&n), "{n}");
}

#[test]
fn per_address_default_is_an_eighth_of_the_cap_at_most_64() {
    assert_eq!(default_max_connections_per_address(16_384), 64);
    assert_eq!(default_max_connections_per_address(256), 32);
    assert_eq!(default_max_connections_per_address(64), 8);
    assert_eq!(default_max_connections_per_address(4), 1);
}

#[test]
fn an_address_gets_its_cap_and_its_places_back() {
    let table = PerAddress::new(2);
    let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    let mapped: std::net::IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    let b: std::net::IpAddr = "192.0.2.2".parse().unwrap();
    let first = table.admit(a).unwrap();
    let second = table.admit(mapped).unwrap();
    assert!(table.admit(a).is_none(), "a third from the same address");
    let other = table.admit(b).unwrap();
    assert_eq!((table.open(a), table.open(b)), (2, 1));
    drop(first);
    let again = table.admit(a).unwrap();
    drop((second, again, other));
    assert_eq!(table.addresses(), 0, "no entry outlives its connections");
}

#[test]
fn refusal_counters_are_in_their_own_slots() {
    let stats = ListenerStats::default();
    for (i, reason) in Refusal::ALL.into_iter().enumerate() {
        assert_eq!(reason as usize, i);
        for _ in 0..=i {
            stats.record(reason, None, "");
        }
    }
    for (i, (reason, n)) in stats.snapshot().0.into_iter().enumerate() {
        assert_eq!((reason, n), (Refusal::ALL[i], i as u64 + 1));
    }
    assert!(
        stats
            .snapshot()
            .to_string()
            .starts_with("preface_timeout=1 bad_preface=2 idle_timeout=3 ")
    );
}

mod deadlines {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::super::guard::PREFACE;
    use super::*;

    /// A guarded server end and the client end of an in-memory stream.
    fn pair(
        preface: Duration,
        idle: Duration,
    ) -> (Guarded<DuplexStream>, DuplexStream, Arc<ListenerStats>) {
        let (client, server) = tokio::io::duplex(1024);
        let stats = Arc::new(ListenerStats::default());
        let admitted = Admitted::for_test().unwrap();
        let deadlines = Deadlines { preface, idle };
        let guarded = Guarded::new(server, admitted, deadlines, None, stats.clone());
        (guarded, client, stats)
    }

    /// Reads until an error (or end of stream, reported as `None`).
    async fn read_until_error(io: &mut Guarded<DuplexStream>) -> Option<std::io::ErrorKind> {
        let mut buf = [0u8; 64];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => return None,
                Ok(_) => continue,
                Err(e) => return Some(e.kind()),
            }
        }
    }

    const SETTINGS_HEADER: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

    #[tokio::test]
    async fn one_byte_and_silence_is_a_preface_timeout() {
        let (mut io, mut client, stats) = pair(Duration::from_millis(50), Duration::from_secs(60));
        client.write_all(&PREFACE[..1]).await.unwrap();
        assert_eq!(
            read_until_error(&mut io).await,
            Some(std::io::ErrorKind::TimedOut)
        );
        assert_eq!(stats.get(Refusal::PrefaceTimeout), 1);
        // Later reads fail too, uncounted.
        assert!(io.read(&mut [0u8; 8]).await.is_err());
        assert_eq!(stats.get(Refusal::PrefaceTimeout), 1);
        assert_eq!(stats.get(Refusal::IdleTimeout), 0);
    }

    #[tokio::test]
    async fn the_preface_without_a_frame_header_is_a_preface_timeout() {
        let (mut io, mut client, stats) = pair(Duration::from_millis(50), Duration::from_secs(60));
        client.write_all(PREFACE).await.unwrap();
        client.write_all(&SETTINGS_HEADER[..8]).await.unwrap();
        assert_eq!(
            read_until_error(&mut io).await,
            Some(std::io::ErrorKind::TimedOut)
        );
        assert_eq!(stats.get(Refusal::PrefaceTimeout), 1);
    }

    #[tokio::test]
    async fn garbage_is_refused_at_its_first_wrong_byte() {
        let (mut io, mut client, stats) = pair(Duration::from_secs(60), Duration::from_secs(60));
        client.write_all(b"PRI * HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            read_until_error(&mut io).await,
            Some(std::io::ErrorKind::InvalidData)
        );
        assert_eq!(stats.get(Refusal::BadPreface), 1);
    }

    #[tokio::test]
    async fn a_connection_is_closed_when_idle_and_kept_while_read_from() {
        let idle = Duration::from_secs(1);
        let (mut io, mut client, stats) = pair(Duration::from_secs(60), idle);
        client.write_all(PREFACE).await.unwrap();
        client.write_all(&SETTINGS_HEADER).await.unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < PREFACE.len() + SETTINGS_HEADER.len() {
            got += io.read(&mut buf).await.unwrap();
        }
        // A byte every tenth of the idle timeout, for about one timeout:
        // the connection stays.
        let writer = tokio::spawn(async move {
            for _ in 0..9 {
                tokio::time::sleep(idle / 10).await;
                client.write_all(&[0]).await.unwrap();
            }
            client
        });
        let mut read = 0;
        while read < 9 {
            read += io.read(&mut buf).await.unwrap();
        }
        assert_eq!(stats.get(Refusal::IdleTimeout), 0);
        // Then silence (the client end stays open): closed as idle.
        let _client = writer.await.unwrap();
        assert_eq!(
            read_until_error(&mut io).await,
            Some(std::io::ErrorKind::TimedOut)
        );
        assert_eq!(stats.get(Refusal::IdleTimeout), 1);
        assert_eq!(stats.get(Refusal::PrefaceTimeout), 0);
    }
}

#[test]
fn a_reload_resizes_max_connections_without_closing_any() {
    let mut cap = Capacity::new(4);
    let take = |c: &Capacity| c.permits.clone().try_acquire_owned().ok();
    let held: Vec<_> = (0..3).map(|_| take(&cap).unwrap()).collect();
    // Down to 1 with 3 open: the free permit goes now, 2 are owed.
    cap.resize(1);
    assert_eq!(cap.permits.available_permits(), 0);
    assert_eq!(cap.owed, 2);
    drop(held);
    // Two of the three returned pay the debt; one connection may open.
    let mut admitted = 0;
    while let Some(p) = take(&cap) {
        if let Some(p) = cap.keep(p) {
            admitted += 1;
            p.forget();
        }
    }
    assert_eq!((admitted, cap.owed), (1, 0));
    // Up to 3: two more permits.
    cap.resize(3);
    assert_eq!(cap.permits.available_permits(), 2);
    // A rise while permits are owed pays the debt first.
    let mut cap = Capacity::new(2);
    let held: Vec<_> = (0..2).map(|_| take(&cap).unwrap()).collect();
    cap.resize(1);
    assert_eq!(cap.owed, 1);
    cap.resize(3);
    assert_eq!((cap.owed, cap.permits.available_permits()), (0, 1));
    drop(held);
    assert_eq!(cap.permits.available_permits(), 3);
}

#[test]
fn a_lower_per_address_cap_refuses_new_connections_only() {
    let table = PerAddress::new(3);
    let ip = std::net::Ipv4Addr::LOCALHOST.into();
    let slots: Vec<_> = (0..3).map(|_| table.admit(ip).unwrap()).collect();
    table.set_cap(1);
    assert!(table.admit(ip).is_none());
    assert_eq!(table.open(ip), 3);
    drop(slots);
    let _one = table.admit(ip).unwrap();
    assert!(table.admit(ip).is_none());
}
