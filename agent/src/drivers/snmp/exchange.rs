//! One request and its answer on the device's socket: retries within the
//! poll's time budget, request ids, the SNMPv2c exchange, and SNMPv3's
//! engine discovery, authentication, privacy and report handling (every
//! check an answer must pass is in [`super::v3`]).

use super::*;

impl SnmpDriver {
    /// Sends one request (with retries) and returns the Response PDU.
    pub(super) async fn request(&mut self, req: Request<'_>) -> Result<Pdu, PollError> {
        let pdu = self.request_any_status(&req).await?;
        if pdu.error_status != 0 {
            return Err(self.status_error(&req, &pdu));
        }
        Ok(pdu)
    }

    /// Sends one request (with retries) and returns the Response PDU
    /// whatever its error-status: for a caller that can answer some
    /// statuses itself (a walk asks for fewer columns on `tooBig`).
    pub(super) async fn request_any_status(&mut self, req: &Request<'_>) -> Result<Pdu, PollError> {
        let (socket, addr) = match self.socket.take() {
            Some(s) => s,
            None => self.open().await?,
        };
        let result = self.exchange(&socket, addr, req).await;
        // The socket stays usable whatever happened: stale answers are
        // recognized by their ids.
        self.socket = Some((socket, addr));
        result
    }

    /// The poll error for an answer whose error-status is not noError,
    /// naming the status and the varbind it points at.
    pub(super) fn status_error(&self, req: &Request<'_>, pdu: &Pdu) -> PollError {
        let index = usize::try_from(pdu.error_index).unwrap_or(0);
        let culprit = index
            .checked_sub(1)
            .and_then(|i| req.oids.get(i))
            .map(|o| format!(" for {}", oid_string(o)))
            .unwrap_or_default();
        PollError::error(format!(
            "snmp {}: {}: agent answered {} ({}){culprit}",
            self.cfg.address,
            req.what,
            ber::error_status_name(pdu.error_status),
            pdu.error_status
        ))
    }

    pub(super) async fn open(&self) -> Result<(UdpSocket, SocketAddr), PollError> {
        let address = &self.cfg.address;
        let addr = tokio::net::lookup_host(address)
            .await
            .map_err(|e| PollError::error(format!("cannot resolve {address}: {e}")))?
            .next()
            .ok_or_else(|| PollError::error(format!("{address} resolved to no address")))?;
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await.map_err(|e| {
            PollError::error(format!("snmp {address}: cannot bind a udp socket: {e}"))
        })?;
        // Connected: only the agent's datagrams arrive, and an ICMP port
        // unreachable surfaces as "connection refused".
        socket.connect(addr).await.map_err(|e| {
            PollError::error(format!("snmp {address}: cannot connect udp socket: {e}"))
        })?;
        Ok((socket, addr))
    }

    pub(super) fn fresh_id(&mut self) -> i32 {
        self.next_id = if self.next_id >= i32::MAX - 1 {
            1
        } else {
            self.next_id + 1
        };
        self.next_id
    }

    /// The request/response exchange for either version.
    pub(super) async fn exchange(
        &mut self,
        socket: &UdpSocket,
        addr: SocketAddr,
        req: &Request<'_>,
    ) -> Result<Pdu, PollError> {
        match self.cfg.security.clone() {
            SnmpSecurity::V2c { community } => {
                let id = self.fresh_id();
                let pdu = ber::encode_pdu(req.kind, id, req.a, req.b, req.oids);
                let msg = ber::encode_v2c(community.as_bytes(), &pdu);
                let budget = self.budget();
                let answer = send_and_wait(socket, addr, &budget, &msg, &req.what, |bytes| {
                    let pdu = match ber::decode_v2c(bytes) {
                        Ok((_, _, pdu)) => pdu,
                        Err(e) => return Heard::Refused(malformed(bytes, &e)),
                    };
                    if pdu.request_id != id {
                        Heard::Stale(pdu.request_id)
                    } else if pdu.kind != tag::RESPONSE {
                        Heard::Refused(format!(
                            "answer is a PDU of type 0x{:02x}, not a Response",
                            pdu.kind
                        ))
                    } else {
                        Heard::Answer(pdu)
                    }
                })
                .await;
                match answer {
                    Err(e) if e.kind == FailureKind::Timeout => Err(PollError::timeout(format!(
                        "{} (wrong community, or no SNMP agent listening?)",
                        e.message
                    ))),
                    other => other,
                }
            }
            SnmpSecurity::V3(v3) => self.exchange_v3(socket, addr, req, &v3).await,
        }
    }

    /// One SNMPv3 request. Up to four rounds: engine discovery when no
    /// engine is known; the time synchronization RFC 3414 §4 expects (the
    /// first authenticated request goes out with boots and time 0 and is
    /// answered by an authenticated notInTimeWindow report); a rediscovery
    /// when the agent reports an unknown engine id (its id changed); the
    /// request itself. Every answer goes through [`v3::check`].
    pub(super) async fn exchange_v3(
        &mut self,
        socket: &UdpSocket,
        addr: SocketAddr,
        req: &Request<'_>,
        v3: &SnmpV3,
    ) -> Result<Pdu, PollError> {
        let address = self.cfg.address.clone();
        for round in 0..4 {
            let last = round == 3;
            if self.engine.is_none() {
                self.discover(socket, addr, v3).await?;
            }
            let id = self.fresh_id();
            self.salt = self.salt.wrapping_add(1);
            let Some(engine) = &self.engine else {
                continue;
            };
            let pdu = ber::encode_pdu(req.kind, id, req.a, req.b, req.oids);
            let msg = usm::encode(&usm::Outgoing {
                msg_id: id,
                engine_id: &engine.id,
                boots: engine.boots,
                time: engine.time_now(),
                user: v3.user.as_bytes(),
                context: v3.context.as_bytes(),
                context_engine: None,
                keys: engine.keys.as_ref(),
                salt: self.salt.to_be_bytes(),
                pdu: &pdu,
            });
            let has_priv = engine.keys.as_ref().is_some_and(usm::Keys::has_priv);
            let budget = self.budget();
            let engine = &mut self.engine;
            let user = v3.user.as_bytes();
            let context = v3.context.as_bytes();
            // RFC 3414 §3.2 steps 6-7: a message that fails a check is
            // discarded and the wait goes on, so one forged or garbled
            // datagram cannot fail the poll; its reason is the poll's error
            // only if nothing valid arrives in time.
            let verified = send_and_wait(socket, addr, &budget, &msg, &req.what, |bytes| {
                let m = match usm::decode(bytes) {
                    Ok(m) => m,
                    Err(e) => return Heard::Refused(malformed(bytes, &e)),
                };
                if m.msg_id != id {
                    return Heard::Stale(m.msg_id);
                }
                let Some(engine) = engine.as_mut() else {
                    return Heard::Refused("no engine".into());
                };
                let before = (engine.boots, engine.latest_received);
                match v3::check(engine, user, context, &m, bytes, id) {
                    Ok(v) => Heard::Answer((v, before != (engine.boots, engine.latest_received))),
                    Err(e) => Heard::Refused(e.to_string()),
                }
            })
            .await
            .map_err(|e| {
                if has_priv && e.kind == FailureKind::Timeout {
                    PollError::timeout(format!(
                        "{} (the engine answered discovery: wrong priv_password or priv_protocol? \
                         agents drop requests they cannot decrypt)",
                        e.message
                    ))
                } else {
                    e
                }
            })?;
            let (oid, authenticated, clock_moved) = match verified {
                (v3::Verified::Response(pdu), _) => return Ok(pdu),
                (v3::Verified::Report { oid, authenticated }, moved) => (oid, authenticated, moved),
            };
            if usm::is_not_in_time_window(&oid) {
                if !authenticated {
                    return Err(PollError::error(format!(
                        "snmp {address}: {}: agent reported not in time window without authenticating \
                         the report: refused as a source of time",
                        req.what
                    )));
                }
                if !clock_moved {
                    // The engine's clock is behind what it told us before
                    // (an agent that lost its boot counter over a restart,
                    // against RFC 3414 §2.2.2): start over from discovery,
                    // whose first authenticated report is taken as it is.
                    warn!(
                        address = %address,
                        "snmp engine's boots/time went back; discovering it again"
                    );
                    self.engine = None;
                    self.stale_engine = None;
                }
                // Otherwise `check` has moved the engine's clock forward.
                if !last {
                    continue;
                }
            }
            if usm::is_unknown_engine_id(&oid) && !last {
                // Unauthenticated by nature: rediscover, but keep what an
                // authenticated message taught us if the id is the same.
                self.stale_engine = self.engine.take();
                continue;
            }
            return Err(report_error(
                &address,
                &v3.user,
                &oid,
                &req.what.to_string(),
            ));
        }
        Err(PollError::error(format!(
            "snmp {address}: {}: agent keeps reporting a stale engine id or time",
            req.what
        )))
    }

    /// SNMPv3 engine discovery: an empty unauthenticated GET, answered by a
    /// Report carrying the engine id, boots and time.
    pub(super) async fn discover(
        &mut self,
        socket: &UdpSocket,
        addr: SocketAddr,
        v3: &SnmpV3,
    ) -> Result<(), PollError> {
        let id = self.fresh_id();
        let pdu = ber::encode_pdu(tag::GET, id, 0, 0, &[]);
        let msg = usm::encode(&usm::Outgoing {
            msg_id: id,
            engine_id: b"",
            boots: 0,
            time: 0,
            user: b"",
            context: b"",
            context_engine: None,
            keys: None,
            salt: [0; 8],
            pdu: &pdu,
        });
        let what = "SNMPv3 engine discovery";
        let address = self.cfg.address.clone();
        let budget = self.budget();
        // Nothing can authenticate an answer to discovery (there is no key
        // yet): it is believed only for the engine id, never for time.
        let m = send_and_wait(socket, addr, &budget, &msg, &what, |bytes| {
            let m = match usm::decode(bytes) {
                Ok(m) => m,
                Err(e) => return Heard::Refused(malformed(bytes, &e)),
            };
            if m.msg_id != id {
                return Heard::Stale(m.msg_id);
            }
            match v3::open(&m, bytes, None) {
                Err(e) => Heard::Refused(e.to_string()),
                Ok(o) if o.pdu.kind != tag::REPORT => Heard::Refused(format!(
                    "answered a PDU of type 0x{:02x}, not a Report",
                    o.pdu.kind
                )),
                Ok(_) if m.usm.engine_id.is_empty() => {
                    Heard::Refused("answered without an engine id".into())
                }
                Ok(_) => Heard::Answer(m),
            }
        })
        .await?;
        if let Some(stale) = self.stale_engine.take()
            && stale.id == m.usm.engine_id
        {
            self.engine = Some(stale);
            return Ok(());
        }
        // About a million hash rounds: off the async threads.
        let (auth, privacy, engine_id) =
            (v3.auth.clone(), v3.privacy.clone(), m.usm.engine_id.clone());
        let keys = tokio::task::spawn_blocking(move || {
            auth.map(|(proto, pw)| {
                usm::Keys::new(
                    (proto, pw.as_str()),
                    privacy.as_ref().map(|(p, pw)| (*p, pw.as_str())),
                    &engine_id,
                )
            })
        })
        .await
        .map_err(|e| PollError::error(format!("snmp key localization failed: {e}")))?;
        debug!(address = %address, "snmp engine discovered");
        self.engine = Some(Engine::discovered(
            m.usm.engine_id.clone(),
            m.usm.boots,
            m.usm.time,
            keys,
        ));
        Ok(())
    }

    /// How many tries a request gets and how long each may wait: the
    /// poll's time budget shared out over `retries + 1` tries.
    pub(super) fn budget(&self) -> Budget {
        let tries = self.cfg.retries.saturating_add(1);
        let left = self.deadline.saturating_duration_since(Instant::now());
        Budget {
            address: self.cfg.address.clone(),
            tries,
            per_try: (self.timeout / tries)
                .min(left / tries)
                .max(Duration::from_millis(1)),
        }
    }
}

fn report_error(address: &str, user: &str, oid: &[u32], what: &str) -> PollError {
    let reason = usm::report_reason(oid)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("report {}", oid_string(oid)));
    let reason = if reason.starts_with("unknown user") {
        format!("{reason} \"{user}\"")
    } else {
        reason
    };
    PollError::error(format!("snmp {address}: {what}: agent reported {reason}"))
}
