//! An `epochs` row whose committed ranges do not decode, against SQLite
//! and the PostgreSQL of this machine: it stops only its agent.

mod postgres_support;

use std::sync::Arc;

use anyhow::{Context, Result, bail};

use tributary_collector::store::{Durability, Store, StoreUrl};
use tributary_proto::v1 as pb;
use tributary_tests::process::TestDir;

use postgres_support::raw::{RawStream, blocking, key, set};
use postgres_support::{InProcess, TestSchema};

/// An `epochs` row whose committed ranges do not decode, on both stores:
/// the merger's load leaves it out and names it (the rest loads), ListAgents
/// lists its agent with an error naming it and the others as usual, and
/// only that (agent, epoch)'s commits fail; a collector starts on it and
/// ingests for the others, ending the broken epoch's streams naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_epochs_row_is_left_out_and_marks_only_its_agent() -> Result<()> {
    let schema = TestSchema::new("acked_bad_row").await?;
    let dir = TestDir::new("acked_bad_row")?;
    for url in [StoreUrl::Sqlite(dir.join("bad_row.db")), schema.store()] {
        let what = url.to_string();
        let u = url.clone();
        let (fine, broken) = blocking(move || {
            let mut store = Store::open(&u, Durability::Full)?;
            let ids = store.resolve_series(&[key("fine", "d1"), key("broken", "d1")])?;
            store.commit(&set("fine", 1, ids[0], [1, 2]))?;
            store.commit(&set("broken", 9, ids[1], [1, 2]))?;
            Ok((ids[0], ids[1]))
        })
        .await
        .with_context(|| what.clone())?;
        match &url {
            StoreUrl::Sqlite(path) => {
                rusqlite::Connection::open(path)?.execute(
                    "UPDATE epochs SET committed_ranges = x'07deadbeef' WHERE agent = 'broken'",
                    [],
                )?;
            }
            _ => {
                postgres_support::psql(
                    &schema.url(),
                    "UPDATE epochs SET committed_ranges = '\\x07deadbeef'::bytea \
                     WHERE agent = 'broken'",
                )
                .await?;
            }
        }
        let u = url.clone();
        let (loaded, refused) = blocking(move || {
            let mut store = Store::open(&u, Durability::Full)?;
            let loaded = store.load()?;
            store.commit(&set("fine", 1, fine, [3]))?;
            let refused = store
                .commit(&set("broken", 9, broken, [3]))
                .err()
                .map(|e| e.to_string());
            Ok((loaded, refused))
        })
        .await
        .with_context(|| what.clone())?;
        assert_eq!(loaded.unreadable_epochs.len(), 1, "{what}: {loaded:?}");
        let named = &loaded.unreadable_epochs[0];
        assert!(
            named.contains("\"broken\", epoch 9") && named.contains("format 7"),
            "{what}: {named}"
        );
        assert_eq!(
            loaded
                .epochs
                .get(&(Arc::from("fine"), 1))
                .map(|r| r.committed.mark()),
            Some(2),
            "{what}: the other row loads"
        );
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("\"broken\", epoch 9")),
            "{what}: {refused:?}"
        );
        let agents = tributary_collector::store::read::Reader::open(&url)?
            .agents()
            .await?;
        let ids: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["broken", "fine"], "{what}");
        assert!(
            agents[0].error.contains("\"broken\", epoch 9") && agents[0].error.contains("format 7"),
            "{what}: {}",
            agents[0].error
        );
        assert_eq!(
            (agents[1].error.as_str(), agents[1].committed_seq),
            ("", 3),
            "{what}: the other agent as usual, its commit stored"
        );

        // A collector starts on it (its merger used to fail to load),
        // lists both agents, takes the other agent's batches, and ends the
        // broken epoch's stream naming the row.
        let c = InProcess::start(url.clone()).await?;
        let mut query = pb::query_client::QueryClient::connect(c.url()).await?;
        let listed = query
            .list_agents(pb::ListAgentsRequest::default())
            .await?
            .into_inner()
            .agents;
        let marked: Vec<(&str, bool)> = listed
            .iter()
            .map(|a| (a.id.as_str(), a.error.contains("\"broken\", epoch 9")))
            .collect();
        assert_eq!(marked, [("broken", true), ("fine", false)], "{what}");
        let mut fine_stream = RawStream::open(&c.url(), "fine", 1).await?;
        assert_eq!(fine_stream.welcome, 3, "{what}");
        fine_stream.send(4).await?;
        assert_eq!(fine_stream.acked(4).await?, 4, "{what}");
        let mut broken_stream = RawStream::open(&c.url(), "broken", 9).await?;
        broken_stream.send(4).await?;
        let refused = match broken_stream.acked(4).await {
            Ok(seq) => bail!("{what}: batch of the broken epoch acked ({seq})"),
            Err(e) => e.to_string(),
        };
        // (The status is quoted in the error: its quotes are escaped.)
        assert!(
            refused.contains("broken")
                && refused.contains("epoch 9")
                && refused.contains("format 7"),
            "{what}: {refused}"
        );
        drop((fine_stream, broken_stream));
        c.stop().await?;
    }
    Ok(())
}
