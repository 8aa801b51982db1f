//! Wiring: open the store, load or create the CA, and run the HTTPS server.

use crate::config::Config;
use crate::config::create_private_dir;
use anyhow::{Context, Result, bail};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use onramp_pki::{CaKeyAlgorithm, CertificateAuthority, SecretHasher, pem_to_der_chain};
use onramp_service::{BootstrapCa, Onramp, ProvisioningSettings, RateLimit, Settings, now};
use std::sync::Arc;
use std::time::Duration;

/// Whether opening the data directory may create it and the CA: only
/// `onramp serve` and `onramp init` may; every admin command must find the
/// server's existing directory, or its tokens and certificates would come
/// from a CA the server never sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDir {
    CreateIfMissing,
    MustExist,
}

/// Opens everything a service call needs, after checking that the data
/// directory and its key directories belong to this user and nobody else
/// can write to them.
pub async fn open_onramp(cfg: &Config, data_dir: DataDir) -> Result<Onramp> {
    match data_dir {
        DataDir::CreateIfMissing => cfg.create_data_dir()?,
        DataDir::MustExist => cfg.require_initialised()?,
    }
    cfg.check_data_dir()?;
    let store = onramp_store::open(&cfg.database_url())
        .await
        .context("opening the registry database")?;
    let ca = match data_dir {
        DataDir::CreateIfMissing => load_or_create_ca(cfg)?,
        DataDir::MustExist => {
            CertificateAuthority::load(&cfg.ca_dir()).context("loading the CA")?
        }
    };
    // The active CA was loaded (or created) above; the previous and retired
    // issuing CAs of a rollover come with it.
    drop(ca);
    let authorities =
        onramp_pki::Authorities::load(&cfg.ca_dir()).context("loading the issuing CAs")?;
    if data_dir == DataDir::CreateIfMissing {
        create_private_dir(&cfg.data_dir.join("secrets"))?;
    }
    let hasher = SecretHasher::load_or_create(&cfg.hmac_key_path())?;
    let mut bootstrap_cas = Vec::new();
    for b in &cfg.enrolment.bootstrap_cas {
        let pem = std::fs::read_to_string(&b.cert)
            .with_context(|| format!("reading bootstrap CA {}", b.cert.display()))?;
        for der in pem_to_der_chain(&pem)? {
            bootstrap_cas.push(BootstrapCa {
                der,
                tenant: b.tenant.clone(),
            });
        }
    }
    let e = &cfg.enrolment;
    let settings = Settings {
        device_cert_validity_days: e.device_cert_validity_days,
        token_ttl_secs: e.token_ttl_secs,
        require_allowlist: e.require_allowlist,
        enrolment_retry_window_secs: e.retry_window_secs.max(0),
        rate_per_source: RateLimit {
            per_second: e.rate_per_source.per_second,
            burst: e.rate_per_source.burst,
        },
        rate_per_credential: RateLimit {
            per_second: e.rate_per_credential.per_second,
            burst: e.rate_per_credential.burst,
        },
        bootstrap_cas,
        default_device_policy: cfg.mqtt.default_device_policy,
        provisioning: {
            let p = &cfg.provisioning;
            ProvisioningSettings {
                ownership_token_ttl_secs: p.ownership_token_ttl_secs.max(1),
                rate_per_claim: RateLimit {
                    per_second: p.rate_per_claim.per_second,
                    burst: p.rate_per_claim.burst,
                },
                rate_per_source: RateLimit {
                    per_second: p.rate_per_source.per_second,
                    burst: p.rate_per_source.burst,
                },
                hook_timeout: std::time::Duration::from_secs(p.hook_timeout_secs.clamp(1, 60)),
                claim_expiry_warning_days: p.claim_expiry_warning_days.max(0),
                jitp_drop_first_connection: p.jitp_drop_first_connection,
            }
        },
        failures_per_serial: e.failures_per_serial.limit(),
        api_key_failures_per_source: cfg.http.api_key_failures_per_source.limit(),
        refusal_audit_window_secs: cfg.http.refusal_audit_window_secs.max(1),
        jobs_rate_per_thing: onramp_service::Settings::default().jobs_rate_per_thing,
        rollout_window_secs: cfg.jobs.rollout_window_secs.clamp(1, 60),
        artifacts: {
            let a = &cfg.artifacts;
            onramp_service::ArtifactSettings {
                dir: Some(cfg.artifacts_dir()),
                max_upload_bytes: a.max_upload_bytes.max(1),
                url_ttl_secs: a.url_ttl_secs.max(1),
                downloads_per_device: RateLimit {
                    per_second: a.downloads_per_device.per_second,
                    burst: a.downloads_per_device.burst,
                },
                download_bytes_per_sec: a.download_bytes_per_sec,
            }
        },
        events: {
            let v = &cfg.events;
            onramp_service::EventSettings {
                retry: onramp_domain::event::RetryPolicy {
                    initial_secs: v.retry_initial_secs.max(1),
                    max_secs: v.retry_max_secs.max(1),
                    max_attempts: v.max_attempts.max(1),
                },
                timeout: std::time::Duration::from_secs(v.timeout_secs.max(1)),
                batch: 100,
                audit_interval_secs: v.audit_interval_secs.max(0),
                checks: onramp_domain::audit_check::CheckSettings {
                    device_cert_expiry_days: v.device_cert_expiry_days.max(0),
                    ca_expiry_days: v.ca_expiry_days.max(0),
                    never_seen_days: v.never_seen_days.max(0),
                    claim_max_validity_days: v.claim_max_validity_days.max(0),
                    lookback_secs: v.connection_lookback_secs.max(1),
                },
            }
        },
        ca_key_algorithm: cfg
            .ca
            .key_algorithm
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?,
        rotation: onramp_domain::rotation::RotationRules {
            grace_secs: cfg.pki.rotation_grace_secs.max(0),
            pending_ttl_secs: cfg.pki.rotation_pending_ttl_secs.max(1),
            renew_expired_within_secs: match cfg.pki.renew_expired_within_secs {
                secs if secs > 0 => secs,
                _ => i64::from(cfg.pki.renew_expired_within_days) * 86_400,
            },
        },
    };
    // Certificates issued by admin commands carry the same URLs as the
    // server's: the ports it last bound, unless a public URL is configured.
    let read_addr = |name: &str| {
        std::fs::read_to_string(cfg.data_dir.join(name))
            .ok()
            .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port())
    };
    let plain_port = cfg
        .pki
        .listen_addr()
        .map(|listen| read_addr("revocation.addr").unwrap_or_else(|| port_of(listen)));
    let https_port = read_addr("https.addr").unwrap_or_else(|| port_of(&cfg.http.listen));
    let onramp = Onramp::with_authorities(store, authorities, hasher, settings);
    set_revocation_urls(cfg, &onramp, https_port, plain_port)?;
    Ok(onramp)
}

/// Keeps the listeners' client trust anchors equal to the trusted issuing
/// CAs: after a rollover both the old and the new one, after a retirement
/// no longer the retired one. Connections already open are not cut.
async fn follow_issuing_cas(
    mut watch: tokio::sync::watch::Receiver<std::sync::Arc<onramp_pki::Authorities>>,
    https_roots: onramp_pki::ClientRoots,
    bootstrap: Vec<Vec<u8>>,
    mqtt_roots: onramp_pki::ClientRoots,
) {
    while watch.changed().await.is_ok() {
        let authorities = watch.borrow_and_update().clone();
        let anchors = authorities.trust_anchors();
        let mut https = anchors.clone();
        https.extend(bootstrap.iter().cloned());
        for (listener, roots, anchors) in [
            ("HTTPS", &https_roots, https),
            ("MQTT", &mqtt_roots, anchors),
        ] {
            match roots.set_base(anchors) {
                Ok(()) => tracing::info!(
                    listener,
                    active = %authorities.active().issuing_ca_id(),
                    trusted = authorities.trusted().count(),
                    "client trust anchors follow the issuing CAs"
                ),
                Err(e) => {
                    tracing::error!(listener, error = %e, "could not change the client trust anchors; the previous ones stay")
                }
            }
        }
    }
}

/// The port of a `host:port` listen address (0 when there is none).
fn port_of(listen: &str) -> u16 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The base of the CRL and OCSP URLs in issued certificates:
/// `pki.public_url`; else `http://<first host>:<port>` of the plain-HTTP
/// revocation listener when it is on; else `https://<first host>:<port>` of
/// the HTTPS listener.
fn revocation_base_url(cfg: &Config, https_port: u16, plain_port: Option<u16>) -> String {
    let configured = cfg.pki.public_url.trim();
    if !configured.is_empty() {
        return configured.trim_end_matches('/').to_string();
    }
    let host = cfg
        .http
        .hosts
        .first()
        .map(String::as_str)
        .unwrap_or("localhost");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    match plain_port {
        Some(port) => format!("http://{host}:{port}"),
        None => format!("https://{host}:{https_port}"),
    }
}

fn set_revocation_urls(
    cfg: &Config,
    onramp: &Onramp,
    https_port: u16,
    plain_port: Option<u16>,
) -> Result<()> {
    let base = revocation_base_url(cfg, https_port, plain_port);
    onramp
        .set_revocation_base(&base)
        .with_context(|| "`pki.public_url` (ONRAMP_PKI__PUBLIC_URL)".to_string())?;
    Ok(())
}

/// The base of artifact download URLs: `artifacts.public_url`, or the first
/// server host name with the bound HTTPS port.
fn artifact_base_url(cfg: &Config, port: u16) -> String {
    let configured = cfg.artifacts.public_url.trim();
    if !configured.is_empty() {
        return configured.trim_end_matches('/').to_string();
    }
    let host = cfg
        .http
        .hosts
        .first()
        .map(String::as_str)
        .unwrap_or("localhost");
    if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    }
}

fn load_or_create_ca(cfg: &Config) -> Result<CertificateAuthority> {
    let dir = cfg.ca_dir();
    if CertificateAuthority::exists(&dir) {
        return CertificateAuthority::load(&dir).context("loading the CA");
    }
    let alg: CaKeyAlgorithm = cfg
        .ca
        .key_algorithm
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))?;
    tracing::info!(dir = %dir.display(), algorithm = ?alg, "creating a new root and issuing CA");
    create_private_dir(&dir)?;
    CertificateAuthority::create(&dir, alg, &cfg.ca.organization, now()).context("creating the CA")
}

fn install_metrics() -> Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("onramp_enrolment_duration_seconds".into()),
            &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )
        .context("metric buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// Binds one listener; a failure names the setting that chose the address
/// (`setting`, its variable `env`, and any `alternative`).
async fn bind(
    addr: &str,
    what: &str,
    (setting, env, alternative): (&str, &str, &str),
) -> Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) => {
            let taken = if e.kind() == std::io::ErrorKind::AddrInUse {
                "another process, or another Onramp, holds the port; "
            } else {
                ""
            };
            Err(anyhow::Error::new(e).context(format!(
                "cannot listen on {addr} for the {what}: {taken}change `{setting}` ({env}){alternative}"
            )))
        }
    }
}

pub async fn serve(cfg: Config) -> Result<()> {
    let metrics = install_metrics()?;
    crate::telemetry::register();
    tokio::spawn(crate::telemetry::sample_heap(Duration::from_secs(5)));
    let onramp = open_onramp(&cfg, DataDir::CreateIfMissing).await?;
    let state = onramp_http::AppState {
        onramp: onramp.clone(),
        metrics: Some(metrics),
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };

    // The operations listener is bound before the device listeners, so that
    // a taken port stops the server before devices can reach it.
    let ops_listener = match cfg.ops.listen_addr() {
        Some(listen) => Some(
            bind(
                listen,
                "operations listener",
                (
                    "ops.listen",
                    "ONRAMP_OPS__LISTEN",
                    r#", or set it to "off""#,
                ),
            )
            .await?,
        ),
        None => None,
    };
    // The HTTPS and revocation listeners are bound before any certificate
    // is issued: the URLs certificates carry name their ports.
    let listener = bind(
        &cfg.http.listen,
        "HTTPS listener",
        ("http.listen", "ONRAMP_HTTP__LISTEN", ""),
    )
    .await?;
    let addr = listener.local_addr()?;
    let revocation_listener = match cfg.pki.listen_addr() {
        Some(listen) => Some(
            bind(
                listen,
                "CRL and OCSP listener",
                (
                    "pki.listen",
                    "ONRAMP_PKI__LISTEN",
                    r#", or set it to "off""#,
                ),
            )
            .await?,
        ),
        None => None,
    };
    let plain_port = match &revocation_listener {
        Some(l) => Some(l.local_addr()?.port()),
        None => None,
    };
    set_revocation_urls(&cfg, &onramp, addr.port(), plain_port)?;
    let identity = onramp
        .ca()
        .ensure_server_identity(&cfg.tls_dir(), &cfg.http.hosts, now())
        .context("issuing the server certificate")?;
    onramp
        .enable_revocation(onramp_service::RevocationSettings {
            crl_validity_secs: cfg.pki.crl_validity_secs.max(120),
            ocsp_validity_secs: cfg.pki.ocsp_validity_secs.max(60),
            ocsp_signer_validity_days: cfg.pki.ocsp_signer_validity_days.max(1),
        })
        .await
        .context("signing the first CRL and loading the OCSP signer")?;
    if let Some(urls) = onramp.ca().revocation_urls() {
        tracing::info!(crl = %urls.crl, ocsp = %urls.ocsp, "issued certificates point at these revocation URLs");
    }
    // Client certificates chain to any trusted issuing CA (two during a
    // rollover) or a bootstrap CA; the anchors follow rollovers and
    // retirements without a restart (`follow_issuing_cas`).
    let bootstrap: Vec<Vec<u8>> = onramp
        .settings()
        .bootstrap_cas
        .iter()
        .map(|b| b.der.clone())
        .collect();
    let https_anchors = |a: &onramp_pki::Authorities| {
        let mut roots = a.trust_anchors();
        roots.extend(bootstrap.iter().cloned());
        roots
    };
    // Renewal after expiry: Onramp's own recently expired device
    // certificates pass the handshake; the service lets them renew only.
    let renewal = onramp_pki::ExpiredRenewal {
        issuer_der: onramp.ca().issuing_der().to_vec(),
        window_secs: onramp.settings().rotation.renew_expired_within_secs,
    };
    let https_roots = onramp_pki::ClientRoots::new_renewing(
        https_anchors(&onramp.authorities()),
        Some(renewal.clone()),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let chain_pem = std::fs::read(&identity.chain_pem_path)?;
    let key_pem = std::fs::read(&identity.key_path)?;
    let mqtt_roots = onramp_pki::ClientRoots::new_renewing(
        onramp.authorities().trust_anchors(),
        Some(renewal.clone()),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let tls = onramp_http::tls_config_with_roots(&chain_pem, &key_pem, https_roots.clone())
        .map_err(|e| anyhow::anyhow!(e))?;
    tokio::spawn(follow_issuing_cas(
        onramp.watch_authorities(),
        https_roots,
        bootstrap.clone(),
        mqtt_roots.clone(),
    ));

    let mqtt = if cfg.mqtt.enabled {
        let m = &cfg.mqtt;
        let settings = onramp_gateway::GatewaySettings {
            max_connections: m.max_connections,
            require_client_id_match: m.require_client_id_match,
            max_payload_bytes: m.max_payload_bytes,
            max_subscriptions: m.max_subscriptions,
            session_expiry_default: Duration::from_secs(m.session_expiry_default_secs),
            handshake_timeout: Duration::from_secs(m.handshake_timeout_secs),
            connect_timeout: Duration::from_secs(m.handshake_timeout_secs),
            session_limits: onramp_broker::SessionLimits {
                max_inflight: m.max_inflight,
                max_queued: m.max_queued,
                max_stored: m.stored_session_max_messages,
            },
            rate_per_source: RateLimit {
                per_second: m.rate_per_source.per_second,
                burst: m.rate_per_source.burst,
            },
            rate_per_identity: RateLimit {
                per_second: m.rate_per_identity.per_second,
                burst: m.rate_per_identity.burst,
            },
            claim_rate_per_certificate: RateLimit {
                per_second: m.claim_rate_per_certificate.per_second,
                burst: m.claim_rate_per_certificate.burst,
            },
            claim_rate_per_source: RateLimit {
                per_second: m.claim_rate_per_source.per_second,
                burst: m.claim_rate_per_source.burst,
            },
            aws_strict: m.aws_strict,
            max_keep_alive_secs: m.max_keep_alive_secs,
            publisher_hold: Duration::from_millis(m.publisher_hold_ms),
            ..Default::default()
        };
        let gateway = Arc::new(onramp_gateway::Gateway::new(onramp.clone(), settings));
        let restored = gateway
            .restore_retained()
            .await
            .map_err(|e| anyhow::anyhow!("loading retained messages: {e}"))?;
        let sessions = gateway
            .restore_sessions()
            .await
            .map_err(|e| anyhow::anyhow!("loading persistent MQTT sessions: {e}"))?;
        tracing::info!(sessions, "persistent MQTT sessions restored");
        gateway
            .start_identity_watch()
            .await
            .map_err(|e| anyhow::anyhow!("reading the identity-change feed: {e}"))?;
        let roots = mqtt_roots.clone();
        let mqtt_tls = onramp_gateway::tls_config(&chain_pem, &key_pem, roots.clone())
            .map_err(|e| anyhow::anyhow!(e))?;
        gateway
            .use_client_roots(roots)
            .await
            .map_err(|e| anyhow::anyhow!("loading registered CAs: {e}"))?;
        let listener = bind(
            &m.listen,
            "MQTT listener",
            (
                "mqtt.listen",
                "ONRAMP_MQTT__LISTEN",
                ", or set `mqtt.enabled = false`",
            ),
        )
        .await?;
        let addr = listener.local_addr()?;
        std::fs::write(cfg.data_dir.join("mqtt.addr"), addr.to_string())?;
        tracing::info!(%addr, retained = restored, "onramp is serving MQTT over mutual TLS");
        println!("onramp mqtt listening on {addr}");
        let maintenance = tokio::spawn(gateway.clone().maintain());
        let served = tokio::spawn(onramp_gateway::serve(
            listener,
            Arc::new(mqtt_tls),
            gateway,
            stopped(),
        ));
        Some((served, maintenance))
    } else {
        None
    };

    let revocation = match revocation_listener {
        Some(l) => {
            let plain_addr = l.local_addr()?;
            std::fs::write(cfg.data_dir.join("revocation.addr"), plain_addr.to_string())?;
            tracing::info!(addr = %plain_addr, "onramp is serving the CRL, OCSP and SCEP over plain HTTP");
            println!("onramp revocation listening on http://{plain_addr}");
            Some(tokio::spawn(onramp_http::serve_ops(
                l,
                onramp_http::revocation_router(state.clone()),
                stopped(),
            )))
        }
        None => {
            let _ = std::fs::remove_file(cfg.data_dir.join("revocation.addr"));
            None
        }
    };
    let ops = match ops_listener {
        Some(ops_listener) => {
            let ops_addr = ops_listener.local_addr()?;
            std::fs::write(cfg.data_dir.join("ops.addr"), ops_addr.to_string())?;
            tracing::info!(addr = %ops_addr, "onramp is serving health, readiness and metrics over plain HTTP");
            println!("onramp ops listening on http://{ops_addr}");
            Some(tokio::spawn(onramp_http::serve_ops(
                ops_listener,
                onramp_http::ops_router(state.clone()),
                stopped(),
            )))
        }
        None => {
            let _ = std::fs::remove_file(cfg.data_dir.join("ops.addr"));
            let metrics = if cfg.http.metrics {
                "/metrics is served on the HTTPS listener"
            } else {
                "/metrics is not served"
            };
            tracing::info!("the operations listener is off (ops.listen); {metrics}");
            None
        }
    };
    // Tests and scripts read the bound address (the port may be ephemeral).
    std::fs::write(cfg.data_dir.join("https.addr"), addr.to_string())?;
    onramp.set_artifact_base_url(&artifact_base_url(&cfg, addr.port()));
    let unfinished = onramp.clean_artifact_uploads();
    if unfinished > 0 {
        tracing::info!(count = unfinished, "removed unfinished artifact uploads");
    }
    let served = if cfg.http.metrics {
        "EST, API, CRL, OCSP, health, metrics"
    } else {
        "EST, API, CRL, OCSP, health"
    };
    tracing::info!(%addr, backend = onramp.backend(), "onramp is serving HTTPS ({served})");
    println!("onramp listening on https://{addr}");

    // Housekeeping (purges, expiry checks, compaction, shadow deltas,
    // refusal audits, job timers and rollouts) runs whether or not MQTT is enabled.
    let (sched_stop_tx, sched_stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(onramp.clone().run_scheduler(sched_stop_rx));
    let app = onramp_http::router(state, cfg.http.metrics);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    onramp_http::serve(listener, Arc::new(tls), app, cfg.http.limits(), stopped()).await?;
    let _ = sched_stop_tx.send(true);
    let _ = scheduler.await;
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    if let Some(revocation) = revocation {
        let _ = revocation.await;
    }
    if let Some((served, maintenance)) = mqtt {
        maintenance.abort();
        let _ = served.await;
    }
    tracing::info!("onramp stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

pub fn import_ca(cfg: &Config, cert: &std::path::Path, key: &std::path::Path) -> Result<()> {
    if CertificateAuthority::exists(&cfg.ca_dir()) {
        bail!(
            "a CA already exists in {}; import only into a fresh data directory",
            cfg.ca_dir().display()
        );
    }
    // Importing is how a CA comes into a new data directory, as `init` is.
    cfg.create_data_dir()?;
    cfg.check_data_dir()?;
    create_private_dir(&cfg.ca_dir())?;
    let cert_pem =
        std::fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_pem =
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    CertificateAuthority::import(&cfg.ca_dir(), &cert_pem, &key_pem)?;
    Ok(())
}
