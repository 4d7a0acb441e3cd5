//! Reloading the collector's settings without a restart (SIGHUP; README
//! "Reload"). `main` reads and checks the config file again with the same
//! engine and flags as at start (`config::resolve`) and hands the result
//! over as a [`Reload`]; the reload task (this file) owns the settings the
//! collector runs with and gives each owner its part. A reload is applied
//! whole or not at all:
//!
//! - a file that does not load (a syntax error, a bad value, a TLS file
//!   that cannot be read: each named at `file:line: key`) is refused;
//! - a change of a setting that is fixed while the collector runs
//!   ([`needs_restart`]: the store, HTTP/2 settings, operators, `[query]`,
//!   mutual TLS on or off, ...) is refused with a message naming it and
//!   saying a restart is needed (`listen` and `http_listen` are checked by
//!   `main`, which binds them);
//! - an `[[exports]]` change that cannot start (its sink, the commit log)
//!   is refused before anything changes.
//!
//! Either way the running settings stay, and the refusal is logged and
//! counted (`tributary_collector_config_reload_failures_total`). Otherwise
//! each owner gets its part, over the channel it already listens on:
//!
//! - the TLS certificate, key and client CA: [`LiveTls::replace`]; new
//!   handshakes use them, open connections keep theirs;
//! - `allowed_agents`: a `watch` of the roles that the Ingest service reads
//!   per new stream and every open session watches (a session whose agent
//!   is no longer allowed answers what it sent, then ends with
//!   PERMISSION_DENIED, which is also what its next Hello gets);
//! - the session `[limits]`: a `watch` the Ingest service reads per new
//!   stream (an open stream keeps the limits it started with);
//! - the listener's `[limits]` (connection caps, handshake, preface and idle
//!   timeouts): a `watch` the accept task reads before each accept;
//! - `retention` and `max_series_per_agent`: a command to the merger;
//! - `[[exports]]`: started, stopped or restarted by difference
//!   (`crate::export::Exports::apply`).
//!
//! Nothing on the data path takes a lock: sessions and the accept task
//! read their `watch` once per stream or connection, the TLS resolver once
//! per handshake.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::ServerConfig;
use crate::export::Exports;
use crate::listener::{Admission, Deadlines, default_max_connections_per_address};
use crate::merger::{MergerSettings, SettingsHandle};
use crate::metrics::ReloadMetrics;
use crate::roles::Roles;
use crate::session::Limits;
use crate::tls::LiveTls;

/// A reload as `main` hands it over: the settings read and checked again,
/// or why they could not be (the message names the file, line and key).
#[derive(Debug)]
pub struct Reload {
    pub settings: Result<ServerConfig, String>,
    /// What the new settings allow that weakens security (as at start),
    /// logged once they are applied.
    pub warnings: Vec<String>,
}

/// The reload task's state: the settings running now and a way to reach
/// each owner of a part of them.
pub(super) struct Owners {
    pub running: ServerConfig,
    pub roles: watch::Sender<Arc<Roles>>,
    pub limits: watch::Sender<Arc<Limits>>,
    pub admission: watch::Sender<Admission>,
    pub tls: Option<LiveTls>,
    pub merger: SettingsHandle,
    pub exports: Exports,
    pub metrics: ReloadMetrics,
    /// How long a stopped export may take to finish its page.
    pub deadline: Duration,
}

/// The listener's part of `config`.
pub(super) fn admission(config: &ServerConfig) -> Admission {
    Admission {
        max_connections: config.max_connections,
        max_connections_per_address: config
            .max_connections_per_address
            .unwrap_or_else(|| default_max_connections_per_address(config.max_connections)),
        handshake_timeout: config.handshake_timeout,
        deadlines: Deadlines {
            preface: config.preface_timeout,
            idle: config.idle_timeout,
        },
    }
}

/// The merger's part of `config`.
pub(super) fn merger_settings(config: &ServerConfig) -> MergerSettings {
    MergerSettings {
        retention: config.retention,
        max_series_per_agent: config.limits.max_series_per_agent,
    }
}

/// The settings that differ between `running` and `new` and cannot change
/// while the collector runs, as the file names them.
pub fn needs_restart(running: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mutual = |c: &ServerConfig| c.tls.as_ref().map(|t| t.mutual);
    let checks = [
        ("store", running.store_url() == new.store_url()),
        ("synchronous", running.durability == new.durability),
        (
            "[tls] (on or off)",
            running.tls.is_some() == new.tls.is_some(),
        ),
        (
            "tls.client_ca (mutual TLS on or off)",
            mutual(running) == mutual(new),
        ),
        ("operators", running.roles.operators == new.roles.operators),
        (
            "limits.max_concurrent_streams",
            running.max_concurrent_streams == new.max_concurrent_streams,
        ),
        (
            "limits.max_message_bytes",
            running.max_message_bytes == new.max_message_bytes,
        ),
        (
            "limits.max_header_list_bytes",
            running.max_header_list_bytes == new.max_header_list_bytes,
        ),
        (
            "limits.max_local_error_resets",
            running.max_local_error_resets == new.max_local_error_resets,
        ),
        (
            "limits.keepalive_interval",
            running.keepalive_interval == new.keepalive_interval,
        ),
        (
            "limits.keepalive_timeout",
            running.keepalive_timeout == new.keepalive_timeout,
        ),
        (
            "limits.max_series_in_memory",
            running.limits.max_series_in_memory == new.limits.max_series_in_memory,
        ),
        ("[query]", running.query_limits == new.query_limits),
        ("name", running.name == new.name),
    ];
    checks
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(key, _)| key)
        .collect()
}

/// Applies reloads until `stop`; returns the exports for shutdown.
pub(super) async fn run(
    mut owners: Owners,
    mut reloads: mpsc::Receiver<Reload>,
    stop: CancellationToken,
) -> Exports {
    loop {
        let mut reload = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = reloads.recv() => match r {
                Some(r) => r,
                // No reloads (tests, or `main` gone): wait for the stop.
                None => {
                    stop.cancelled().await;
                    break;
                }
            },
        };
        let warnings = std::mem::take(&mut reload.warnings);
        match owners.apply(reload).await {
            Ok(done) => {
                owners.metrics.applied.inc();
                info!(changed = %done, "config reloaded");
                for warning in warnings {
                    warn!("{warning}");
                }
            }
            Err(e) => {
                owners.metrics.failed.inc();
                error!(error = %e, "config reload refused; the running config stays");
            }
        }
    }
    owners.exports
}

impl Owners {
    /// Checks and applies one reload; what changed, for the log line.
    async fn apply(&mut self, reload: Reload) -> Result<String, String> {
        let new = reload.settings?;
        let fixed = needs_restart(&self.running, &new);
        if !fixed.is_empty() {
            return Err(format!(
                "{} changed: a restart is needed to apply {}; nothing was applied",
                fixed.join(", "),
                if fixed.len() == 1 { "it" } else { "them" }
            ));
        }
        // The one step that can fail, before anything changes.
        let exports = if new.exports == self.running.exports {
            None
        } else {
            Some(
                self.exports
                    .prepare(&new.exports)
                    .await
                    .map_err(|e| format!("{e}; nothing was applied"))?,
            )
        };

        let mut done = Vec::new();
        if let (Some(live), Some(tls)) = (&self.tls, &new.tls) {
            // The files are read again at every reload: a certificate
            // replaced under the same name is the usual rotation.
            let changed = self.running.tls.as_ref().and_then(|t| t.leaf()) != tls.leaf();
            live.replace(tls.clone()).map_err(|e| e.to_string())?;
            done.push(if changed {
                "tls (new certificate)"
            } else {
                "tls (files read again)"
            });
        }
        if new.roles.allowed_agents != self.running.roles.allowed_agents {
            self.roles.send_replace(new.roles.clone());
            done.push("allowed_agents");
        }
        if new.limits != self.running.limits {
            self.limits.send_replace(Arc::new(new.limits.clone()));
            done.push("stream limits");
        }
        let admission = admission(&new);
        if self.admission.send_if_modified(|a| {
            let changed = *a != admission;
            *a = admission;
            changed
        }) {
            done.push("connection limits");
        }
        let (merger, was) = (merger_settings(&new), merger_settings(&self.running));
        if merger != was {
            if self.merger.send(merger).await.is_err() {
                warn!("merger stopped: retention and max_series_per_agent not applied");
            }
            if merger.retention != was.retention {
                done.push("retention");
            }
            if merger.max_series_per_agent != was.max_series_per_agent {
                done.push("max_series_per_agent");
            }
        }
        let mut exports_done = String::new();
        if let Some(prepared) = exports {
            let diff = self.exports.apply(prepared, self.deadline).await;
            exports_done = format!(
                "exports (added {:?}, removed {:?}, restarted {:?})",
                diff.added, diff.removed, diff.changed
            );
        }
        self.running = new;
        let mut text = done.join(", ");
        if !exports_done.is_empty() {
            if !text.is_empty() {
                text.push_str(", ");
            }
            text.push_str(&exports_done);
        }
        if text.is_empty() {
            text.push_str("nothing");
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Retention;

    #[test]
    fn only_settings_fixed_while_running_need_a_restart() {
        let running = ServerConfig::new("a.db".into());
        let mut new = running.clone();
        assert!(needs_restart(&running, &new).is_empty());
        new.limits.hello_timeout = Duration::from_secs(1);
        new.limits.max_series_per_agent = 5;
        new.max_connections = 7;
        new.idle_timeout = Duration::from_secs(60);
        new.retention = Some(Retention::new(Duration::from_secs(3600)));
        new.roles = Arc::new(Roles {
            allowed_agents: Some(["edge-1".to_owned()].into()),
            ..Roles::default()
        });
        assert!(needs_restart(&running, &new).is_empty());
        new.keepalive_interval = Duration::from_secs(30);
        new.sqlite_path = "b.db".into();
        new.limits.max_series_in_memory = 10;
        assert_eq!(
            needs_restart(&running, &new),
            [
                "store",
                "limits.keepalive_interval",
                "limits.max_series_in_memory"
            ]
        );
    }
}
