//! Tests of the PostgreSQL backend that need no server: how its failures
//! read. (Against the local server: `tests/tests/postgres_*.rs`.)

#![allow(clippy::unwrap_used)]

use super::PgStore;
use crate::store::Durability;

/// What `tributary-collector serve --store postgres://127.0.0.1:1/x` shows
/// of the store: the URL, the step and the cause, each once, as `main`
/// prints an error (`{:#}`, the cause chain).
#[test]
fn an_unreachable_database_is_named_once_with_its_cause() {
    let Err(e) = PgStore::open("postgres://127.0.0.1:1/x", Durability::Full) else {
        panic!("nothing listens on port 1");
    };
    assert_eq!(
        format!("{:#}", anyhow::Error::from(e)),
        "postgres://127.0.0.1:1/x: connect: error connecting to server: \
         Connection refused (os error 111)"
    );
}

/// What Query answers when the database is down: the call, the URL, and
/// the cause, once (deadpool repeats its cause; tokio-postgres gives its own
/// only as a source).
#[tokio::test]
async fn an_unreachable_database_fails_reads_once_with_its_cause() {
    let reader = super::PgReader::new("postgres://127.0.0.1:1/x").unwrap();
    let e = reader.agents().await.unwrap_err();
    assert!(e.is_unavailable());
    assert_eq!(
        format!("{:#}", anyhow::Error::from(e)),
        "list agents in postgres://127.0.0.1:1/x: no connection: Error occurred while \
         creating a new object: error connecting to server: Connection refused (os error 111)"
    );
}
