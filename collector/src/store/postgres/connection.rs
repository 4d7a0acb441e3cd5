//! [`PgStore`]'s connection: one at a time, connected when a call needs
//! it, driven by the store's own current-thread runtime only while a call
//! runs, dropped when it breaks or a call times out (the next call connects
//! again, at most once per [`RECONNECT_QUIET`]).

use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use tracing::debug;

use super::PgStore;
use crate::store::error::error_chain;
use crate::store::{Durability, StoreError};

/// Longest a single store call (a commit, a resolve) may take before the
/// connection is given up and the call fails (the merger then retries).
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a connection attempt may take when the URL does not say.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Least time between two connection attempts.
const RECONNECT_QUIET: Duration = Duration::from_millis(500);

/// Why one operation failed, before the store's name is attached.
#[derive(Debug)]
pub(super) enum Fail {
    Db(&'static str, tokio_postgres::Error),
    Invalid(&'static str, String),
}

/// `?` on a tokio-postgres result inside an operation, naming the step.
pub(super) trait Step<T> {
    fn step(self, what: &'static str) -> Result<T, Fail>;
}

impl<T> Step<T> for Result<T, tokio_postgres::Error> {
    fn step(self, what: &'static str) -> Result<T, Fail> {
        self.map_err(|e| Fail::Db(what, e))
    }
}

impl PgStore {
    /// Runs one operation on the connection (connecting first if needed),
    /// bounded by [`CALL_TIMEOUT`].
    pub(super) fn call<T>(
        &mut self,
        op: impl AsyncFnOnce(&mut Client) -> Result<T, Fail>,
    ) -> Result<T, StoreError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = None;
            if let Some((until, why)) = &self.quiet_until
                && std::time::Instant::now() < *until
            {
                return Err(self.invalid("connect", format!("unreachable: {why}")));
            }
            match self.connect() {
                Ok(client) => {
                    self.quiet_until = None;
                    self.client = Some(client);
                }
                Err(e) => {
                    // The cause alone: the error that repeats it names the
                    // store and the step itself.
                    let why = match &e {
                        StoreError::Postgres { cause, .. } => error_chain(cause),
                        StoreError::Timeout { after, .. } => {
                            format!("no answer within {after:?}")
                        }
                        other => other.to_string(),
                    };
                    self.quiet_until = Some((std::time::Instant::now() + RECONNECT_QUIET, why));
                    return Err(e);
                }
            }
        }
        let Some(client) = self.client.as_mut() else {
            return Err(self.invalid("connect", "no connection".into()));
        };
        let result = self
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, op(client)).await });
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(fail)) => {
                if client.is_closed() {
                    self.client = None;
                }
                Err(match fail {
                    Fail::Db(what, cause) => StoreError::Postgres {
                        store: self.describe.clone(),
                        what,
                        cause,
                    },
                    Fail::Invalid(what, message) => self.invalid(what, message),
                })
            }
            Err(_) => {
                // The connection may be wedged mid-transaction; dropping it
                // makes the server roll back whatever it had not committed.
                self.client = None;
                Err(StoreError::Timeout {
                    store: self.describe.clone(),
                    what: "store call",
                    after: CALL_TIMEOUT,
                })
            }
        }
    }

    fn invalid(&self, what: &'static str, message: String) -> StoreError {
        StoreError::Invalid {
            store: self.describe.clone(),
            what,
            message,
        }
    }

    /// A new connection, its driver spawned on the store's runtime.
    fn connect(&self) -> Result<Client, StoreError> {
        let config = self.config.clone();
        let durability = self.durability;
        let connected = self.rt.block_on(async move {
            let connecting = async {
                let (client, connection) = config.connect(NoTls).await?;
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        debug!(error = %e, "postgres connection ended");
                    }
                });
                if durability == Durability::Normal {
                    client.batch_execute("SET synchronous_commit = off").await?;
                }
                Ok::<_, tokio_postgres::Error>(client)
            };
            tokio::time::timeout(CALL_TIMEOUT, connecting).await
        });
        match connected {
            Ok(Ok(client)) => {
                debug!(store = %self.describe, "connected");
                Ok(client)
            }
            Ok(Err(cause)) => Err(StoreError::Postgres {
                store: self.describe.clone(),
                what: "connect",
                cause,
            }),
            Err(_) => Err(StoreError::Timeout {
                store: self.describe.clone(),
                what: "connect",
                after: CALL_TIMEOUT,
            }),
        }
    }
}
