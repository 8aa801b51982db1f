//! `onramp-bench mqtt-fanin`: many publishers, one subscriber. One
//! subscriber takes `bench/#`; `--publishers` connections then publish as
//! fast as the broker takes them, each on `bench/<i>/t`, for
//! `--duration-secs`, at the subscriber's QoS:
//!
//! - QoS 0: fire and forget; at most `--unflushed-bytes` are buffered in the
//!   client before they are written, so TCP backpressure paces a publisher.
//! - QoS 1: at most `--window` unacknowledged PUBLISHes per publisher.
//! - QoS 2: at most `--window` PUBLISHes per publisher whose PUBCOMP has not
//!   come; a PUBREC counts as the broker's acknowledgement.
//!
//! With `--rate`, the publishers are paced instead, at that many messages
//! per second in all, to compare latency at a load both brokers carry.
//!
//! Each payload starts with the send time (nanoseconds since the run began),
//! the publisher and a sequence number; the subscriber derives end-to-end
//! latency from it. Received per second counts what arrived within the
//! publishing window; drops are sent − received once the subscriber has
//! drained (until nothing arrived for a while).

use super::client::{self, Conn, Publisher, qos_of};
use super::{
    Broker, CpuMark, CpuUse, MqttArgs, Setup, progress, ratio, ratio_text, round3, side_by_side,
};
use crate::report::{Latency, Report};
use crate::sys;
use anyhow::{Context, Result, bail, ensure};
use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::v3::{self, Packet};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};

const SCENARIO: &str = "mqtt-fanin";
const MAX_PACKET: u32 = 1024 * 1024;
/// Send time, publisher, sequence number.
const HEADER_BYTES: usize = 8 + 4 + 8;
/// The drain ends once nothing arrived for this long.
const QUIET: Duration = Duration::from_secs(2);
/// Pause between runs.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct FaninArgs {
    /// Publishing connections.
    #[arg(long, default_value_t = 32)]
    publishers: usize,
    /// How long the publishers publish, seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Payload size (at least 20: send time, publisher, sequence).
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// QoS 1 and 2: unacknowledged (QoS 2: uncompleted) PUBLISHes per publisher.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// QoS 0: bytes a publisher buffers before writing them.
    #[arg(long, default_value_t = 8192)]
    unflushed_bytes: usize,
    /// Messages per second from all publishers together, paced evenly
    /// among them; 0 publishes as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Publishers' socket send buffer in bytes (SO_SNDBUF, which the kernel
    /// doubles), so that what waits in the kernel is bounded too; 0 leaves
    /// the kernel's self-tuning buffer.
    #[arg(long, default_value_t = 65_536)]
    sndbuf_bytes: u32,
    /// QoS levels to run, in order.
    #[arg(long, value_delimiter = ',', default_values_t = [0u8, 1u8])]
    qos: Vec<u8>,
    /// Longest wait for the subscriber to drain after publishing, seconds.
    #[arg(long, default_value_t = 20)]
    drain_secs: u64,
    /// The subscriber keeps a persistent session (cleanSession=0): Onramp
    /// stores what it holds and acknowledges a message once it is durable.
    #[arg(long)]
    persistent_subscriber: bool,
    #[command(flatten)]
    mqtt: MqttArgs,
}

struct Outcome {
    sent: u64,
    /// QoS 1: PUBACKs the publishers got; QoS 2: PUBRECs.
    acked: u64,
    received: u64,
    received_in_window: u64,
    /// Messages whose sequence number was not above the last one seen from
    /// their publisher (duplicates or reordering).
    out_of_order: u64,
    window: Duration,
    latency: Latency,
    cpu: CpuUse,
    peak_rss_kib: u64,
    granted: u8,
    /// Onramp only: its own count of messages taken in, written out and
    /// dropped for a connection that could not keep up, during the run.
    onramp: Option<GatewayCounts>,
}

#[derive(Debug, Clone, Copy, Default)]
struct GatewayCounts {
    messages_in: f64,
    messages_out: f64,
    /// A session's full queue dropped its oldest QoS 1/2 message.
    dropped_queue_full: f64,
    /// A connection's full channel: QoS 0 lost, QoS 1/2 left in flight.
    dropped_connection_behind: f64,
    /// PUBLISHes held for a receiver that was behind: released in time, or
    /// not (then the drop policy applied).
    held_released: f64,
    held_expired: f64,
}

impl GatewayCounts {
    fn of(c: &BTreeMap<String, f64>, qos: u8) -> GatewayCounts {
        let get = |k: &str| c.get(k).copied().unwrap_or(0.0);
        GatewayCounts {
            messages_in: get(&format!("onramp_mqtt_messages_in_total{{qos=\"{qos}\"}}")),
            messages_out: get(&format!("onramp_mqtt_messages_out_total{{qos=\"{qos}\"}}")),
            dropped_queue_full: get("onramp_mqtt_messages_dropped_total{reason=\"queue_full\"}"),
            dropped_connection_behind: get(
                "onramp_mqtt_messages_dropped_total{reason=\"connection_behind\"}",
            ),
            held_released: get("onramp_mqtt_publisher_holds_total{outcome=\"released\"}"),
            held_expired: get("onramp_mqtt_publisher_holds_total{outcome=\"expired\"}"),
        }
    }

    fn since(&self, before: &GatewayCounts) -> GatewayCounts {
        GatewayCounts {
            messages_in: self.messages_in - before.messages_in,
            messages_out: self.messages_out - before.messages_out,
            dropped_queue_full: self.dropped_queue_full - before.dropped_queue_full,
            dropped_connection_behind: self.dropped_connection_behind
                - before.dropped_connection_behind,
            held_released: self.held_released - before.held_released,
            held_expired: self.held_expired - before.held_expired,
        }
    }
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.received_in_window as f64 / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn sent_rate(&self) -> f64 {
        self.sent as f64 / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn drops(&self) -> i64 {
        self.sent as i64 - (self.received - self.out_of_order) as i64
    }

    /// QoS 1 and 2: acknowledged messages the subscriber never got, at
    /// least (acknowledged minus distinct received; a message delivered
    /// without its acknowledgement reaching the publisher could hide a loss).
    fn lost_acknowledged(&self) -> u64 {
        self.acked
            .saturating_sub(self.received.saturating_sub(self.out_of_order))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sent": self.sent,
            "acked": self.acked,
            "lost_acknowledged": self.lost_acknowledged(),
            "received": self.received,
            "received_in_window": self.received_in_window,
            "out_of_order": self.out_of_order,
            "drops": self.drops(),
            "window_s": round3(self.window.as_secs_f64()),
            "received_per_s": self.rate().round(),
            "sent_per_s": self.sent_rate().round(),
            "latency_ms": self.latency.json(),
            "cpu": self.cpu.json(),
            "server_peak_rss_kib": self.peak_rss_kib,
            "granted_qos": self.granted,
            "onramp_counters": self.onramp.map(|g| serde_json::json!({
                "messages_in": g.messages_in,
                "messages_out": g.messages_out,
                "dropped_queue_full": g.dropped_queue_full,
                "dropped_connection_behind": g.dropped_connection_behind,
                "publishers_held_released": g.held_released,
                "publishers_held_expired": g.held_expired,
            })),
        })
    }
}

pub async fn run(args: FaninArgs) -> Result<Report> {
    ensure!(args.publishers > 0, "--publishers must be at least 1");
    ensure!(args.duration_secs > 0, "--duration-secs must be at least 1");
    ensure!(
        args.payload_bytes >= HEADER_BYTES,
        "--payload-bytes must be at least {HEADER_BYTES}"
    );
    ensure!(args.window > 0, "--window must be at least 1");
    ensure!(args.qos.iter().all(|q| *q <= 2), "--qos takes 0, 1 and 2");
    let setup = Setup::start(&args.mqtt, SCENARIO).await?;
    let mut results: Vec<(u8, Vec<(&'static str, Outcome)>)> = Vec::new();
    let mut run_no = 0;
    for &qos in &args.qos {
        let mut per_broker = Vec::new();
        for broker in &setup.brokers {
            if run_no > 0 {
                tokio::time::sleep(SETTLE).await;
            }
            run_no += 1;
            progress(
                SCENARIO,
                &format!(
                    "{}: QoS {qos}, {} publishers for {} s",
                    broker.name, args.publishers, args.duration_secs
                ),
            );
            let outcome = measure(&args, &setup, broker, qos, run_no)
                .await
                .with_context(|| {
                    format!(
                        "{} at QoS {qos}; its last log lines:\n{}",
                        broker.name,
                        setup.log_tail(broker.name)
                    )
                })?;
            progress(
                SCENARIO,
                &format!(
                    "{}: QoS {qos}: sent {}, received {} ({:.0}/s), drops {}",
                    broker.name,
                    outcome.sent,
                    outcome.received,
                    outcome.rate(),
                    outcome.drops()
                ),
            );
            per_broker.push((broker.name, outcome));
        }
        results.push((qos, per_broker));
    }
    Ok(summarise(&args, &setup, &results))
}

async fn measure(
    args: &FaninArgs,
    setup: &Setup,
    broker: &Broker,
    qos: u8,
    run_no: usize,
) -> Result<Outcome> {
    let is_onramp = broker.name == "onramp";
    let counters_before = if is_onramp {
        Some(GatewayCounts::of(&setup.onramp_counters().await?, qos))
    } else {
        None
    };
    sys::reset_peak_rss(broker.pid)?;
    let base = Instant::now();
    let q = qos_of(qos);
    let opened = broker
        .dialer
        .open_session(
            None,
            None,
            &format!("bench-sub-{run_no}"),
            60,
            !args.persistent_subscriber,
        )
        .await
        .context("the subscriber")?;
    let mut sub = opened.conn;
    let granted = client::subscribe(&mut sub, "bench/#", q)
        .await
        .context("the subscriber")?;
    let received = Arc::new(AtomicU64::new(0));
    // Nanoseconds since `base` when publishing stops; set once it is known.
    let deadline_ns = Arc::new(AtomicU64::new(u64::MAX));
    let (stop_tx, stop_rx) = oneshot::channel();
    let subscriber = tokio::spawn(subscribe_loop(
        sub,
        base,
        args.publishers,
        received.clone(),
        deadline_ns.clone(),
        stop_rx,
    ));

    let mut conns = Vec::with_capacity(args.publishers);
    for i in 0..args.publishers {
        let sndbuf = (args.sndbuf_bytes > 0).then_some(args.sndbuf_bytes);
        let opened = broker
            .dialer
            .open_with(None, sndbuf, &format!("bench-pub-{run_no}-{i}"), 60)
            .await
            .with_context(|| format!("publisher {i}"))?;
        conns.push(opened.conn);
    }

    let window = Duration::from_secs(args.duration_secs);
    let cpu = CpuMark::start(broker.pid)?;
    let started = Instant::now();
    let deadline = started + window;
    deadline_ns.store((deadline - base).as_nanos() as u64, Ordering::Relaxed);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let p = PublisherRun {
            index: i as u32,
            qos,
            window: args.window,
            unflushed: args.unflushed_bytes,
            payload: args.payload_bytes,
            rate: (args.rate > 0).then(|| args.rate as f64 / args.publishers as f64),
            base,
            start: started,
            deadline,
            drain: Duration::from_secs(args.drain_secs),
        };
        tasks.spawn(p.run(conn));
    }
    // CPU over the publishing window itself.
    tokio::time::sleep_until(deadline.into()).await;
    let cpu = cpu.stop(Duration::ZERO)?;
    let mut sent = 0;
    let mut acked = 0;
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.context("a publisher task failed")? {
            Ok((s, a)) => {
                sent += s;
                acked += a;
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }

    // Drain: until everything arrived, or nothing did for a while.
    let drain_until = Instant::now() + Duration::from_secs(args.drain_secs);
    let mut last = received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while Instant::now() < drain_until && last < sent {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = received.load(Ordering::Relaxed);
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= QUIET {
            break;
        }
    }
    let _ = stop_tx.send(());
    let stats = subscriber.await.context("the subscriber task failed")??;
    if !errors.is_empty() {
        bail!("{} publishers failed: {}", errors.len(), errors[0]);
    }
    let peak_rss_kib = sys::status_kib(broker.pid, "VmHWM")?;
    let onramp = match counters_before {
        Some(before) => {
            Some(GatewayCounts::of(&setup.onramp_counters().await?, qos).since(&before))
        }
        None => None,
    };
    Ok(Outcome {
        sent,
        acked,
        received: stats.received,
        received_in_window: stats.in_window,
        out_of_order: stats.out_of_order,
        window,
        latency: Latency::of(stats.latencies),
        cpu,
        peak_rss_kib,
        granted: u8::from(granted),
        onramp,
    })
}

/// What one publisher does.
struct PublisherRun {
    index: u32,
    qos: u8,
    window: usize,
    unflushed: usize,
    payload: usize,
    /// Messages per second, when paced.
    rate: Option<f64>,
    base: Instant,
    start: Instant,
    deadline: Instant,
    drain: Duration,
}

impl PublisherRun {
    /// Publishes until the deadline; returns (sent, acknowledged).
    async fn run(self, conn: Conn) -> Result<(u64, u64)> {
        let (reader, mut writer) = split(conn)?;
        writer.set_backpressure_boundary(self.unflushed);
        let q = qos_of(self.qos);
        let permits = Arc::new(Semaphore::new(self.window));
        let acked = Arc::new(AtomicU64::new(0));
        let completed = Arc::new(AtomicU64::new(0));
        // QoS 2: the PUBRELs owed for the PUBRECs the reader got.
        let (release_tx, mut releases) = mpsc::unbounded_channel();
        let acks = tokio::spawn(read_acks(
            reader,
            permits.clone(),
            acked.clone(),
            completed.clone(),
            release_tx,
        ));
        let topic = Publisher::new(&format!("bench/{}/t", self.index), q);
        let mut seq: u64 = 0;
        let mut packet_id: u16 = 0;
        let mut payload = BytesMut::with_capacity(64 * self.payload);
        while Instant::now() < self.deadline {
            if let Some(rate) = self.rate {
                // Paced: wait until the next message is due.
                let due = (self.start.elapsed().as_secs_f64() * rate) as u64;
                if seq >= due {
                    writer.flush().await.context("writing PUBLISH")?;
                    let next = self.start + Duration::from_secs_f64((seq + 1) as f64 / rate);
                    tokio::time::sleep_until(next.min(self.deadline).into()).await;
                    continue;
                }
            }
            while let Ok(id) = releases.try_recv() {
                writer
                    .feed(Packet::PublishRelease { packet_id: id })
                    .await
                    .context("writing PUBREL")?;
            }
            if self.qos >= 1 {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => p.forget(),
                    Err(_) => {
                        writer.flush().await.context("writing PUBLISH")?;
                        let mut done = false;
                        loop {
                            tokio::select! {
                                p = permits.clone().acquire_owned() => {
                                    p.context("the PUBACK reader ended")?.forget();
                                    break;
                                }
                                Some(id) = releases.recv() => writer
                                    .send(Packet::PublishRelease { packet_id: id })
                                    .await
                                    .context("writing PUBREL")?,
                                () = tokio::time::sleep_until(self.deadline.into()) => {
                                    done = true;
                                    break;
                                }
                            }
                        }
                        if done {
                            break;
                        }
                    }
                }
            }
            packet_id = packet_id % u16::MAX + 1;
            let body = self.payload_now(&mut payload, seq);
            writer
                .feed(topic.packet(packet_id, body))
                .await
                .context("writing PUBLISH")?;
            seq += 1;
        }
        writer.flush().await.context("writing PUBLISH")?;
        if self.qos >= 1 {
            let until = Instant::now() + self.drain;
            let finished = |q: u8| {
                if q == 1 {
                    acked.load(Ordering::Relaxed) >= seq
                } else {
                    completed.load(Ordering::Relaxed) >= seq
                }
            };
            while !finished(self.qos) && Instant::now() < until {
                while let Ok(id) = releases.try_recv() {
                    writer
                        .feed(Packet::PublishRelease { packet_id: id })
                        .await
                        .context("writing PUBREL")?;
                }
                writer.flush().await.context("writing PUBREL")?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        writer
            .send(Packet::Disconnect)
            .await
            .context("DISCONNECT")?;
        // The reader ends when the broker closes the connection, which it
        // does once it has read everything sent before the DISCONNECT.
        let _ = tokio::time::timeout(self.drain, acks).await;
        Ok((seq, acked.load(Ordering::Relaxed)))
    }

    /// Send time (ns since the run began), publisher and sequence number,
    /// padded to the payload size.
    fn payload_now(&self, buf: &mut BytesMut, seq: u64) -> Bytes {
        if buf.capacity() < self.payload {
            buf.reserve(64 * self.payload);
        }
        buf.put_u64(self.base.elapsed().as_nanos() as u64);
        buf.put_u32(self.index);
        buf.put_u64(seq);
        buf.put_bytes(0, self.payload - HEADER_BYTES);
        buf.split().freeze()
    }
}

type Reader = FramedRead<ReadHalf<client::Stream>, v3::Codec>;
type Writer = FramedWrite<WriteHalf<client::Stream>, v3::Codec>;

/// Separate reading and writing halves of a connection.
fn split(conn: Conn) -> Result<(Reader, Writer)> {
    let parts = conn.into_parts();
    if !parts.read_buf.is_empty() {
        bail!("unexpected data from the broker after CONNACK");
    }
    let (r, w) = tokio::io::split(parts.io);
    Ok((
        FramedRead::new(r, v3::Codec::new(MAX_PACKET)),
        FramedWrite::new(w, v3::Codec::new(MAX_PACKET)),
    ))
}

async fn read_acks(
    mut reader: Reader,
    permits: Arc<Semaphore>,
    acked: Arc<AtomicU64>,
    completed: Arc<AtomicU64>,
    releases: mpsc::UnboundedSender<std::num::NonZeroU16>,
) {
    while let Some(Ok((packet, _))) = reader.next().await {
        match packet {
            Packet::PublishAck { .. } => {
                acked.fetch_add(1, Ordering::Relaxed);
                permits.add_permits(1);
            }
            // QoS 2: the broker has taken the message; release it.
            Packet::PublishReceived { packet_id } => {
                acked.fetch_add(1, Ordering::Relaxed);
                let _ = releases.send(packet_id);
            }
            Packet::PublishComplete { .. } => {
                completed.fetch_add(1, Ordering::Relaxed);
                permits.add_permits(1);
            }
            _ => {}
        }
    }
    permits.close();
}

struct SubStats {
    received: u64,
    in_window: u64,
    out_of_order: u64,
    latencies: Vec<Duration>,
}

/// Reads PUBLISHes until told to stop, acknowledging them at QoS 1 and 2.
async fn subscribe_loop(
    conn: Conn,
    base: Instant,
    publishers: usize,
    received: Arc<AtomicU64>,
    deadline_ns: Arc<AtomicU64>,
    mut stop: oneshot::Receiver<()>,
) -> Result<SubStats> {
    let (mut reader, writer) = split(conn)?;
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(write_acks(writer, ack_rx));
    let mut stats = SubStats {
        received: 0,
        in_window: 0,
        out_of_order: 0,
        latencies: Vec::with_capacity(1 << 20),
    };
    let mut next_seq = vec![0u64; publishers];
    loop {
        let packet = tokio::select! {
            biased;
            _ = &mut stop => break,
            p = reader.next() => p,
        };
        let publish = match packet {
            Some(Ok((Packet::Publish(p), _))) => p,
            Some(Ok((Packet::PublishRelease { packet_id }, _))) => {
                let _ = ack_tx.send(Packet::PublishComplete { packet_id });
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("the subscriber's connection: {e}"),
            None => bail!("the broker closed the subscriber's connection"),
        };
        let now = base.elapsed().as_nanos() as u64;
        if let Some(id) = publish.packet_id {
            let _ = ack_tx.send(match publish.qos {
                v3::QoS::ExactlyOnce => Packet::PublishReceived { packet_id: id },
                _ => Packet::PublishAck { packet_id: id },
            });
        }
        let p = &publish.payload[..];
        if p.len() < HEADER_BYTES {
            bail!("a {}-byte payload on {}", p.len(), publish.topic);
        }
        let sent_ns = u64::from_be_bytes(p[0..8].try_into().unwrap_or_default());
        let publisher = u32::from_be_bytes(p[8..12].try_into().unwrap_or_default()) as usize;
        let seq = u64::from_be_bytes(p[12..20].try_into().unwrap_or_default());
        stats.received += 1;
        received.fetch_add(1, Ordering::Relaxed);
        if now <= deadline_ns.load(Ordering::Relaxed) {
            stats.in_window += 1;
        }
        stats
            .latencies
            .push(Duration::from_nanos(now.saturating_sub(sent_ns)));
        match next_seq.get_mut(publisher) {
            Some(next) if seq >= *next => *next = seq + 1,
            _ => stats.out_of_order += 1,
        }
    }
    drop(ack_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), acker).await;
    Ok(stats)
}

/// Writes acknowledgements in batches: whatever is queued, then one flush.
async fn write_acks(mut writer: Writer, mut acks: mpsc::UnboundedReceiver<Packet>) -> Result<()> {
    while let Some(ack) = acks.recv().await {
        writer.feed(ack).await?;
        while let Ok(ack) = acks.try_recv() {
            writer.feed(ack).await?;
        }
        writer.flush().await?;
    }
    let _ = writer.send(Packet::Disconnect).await;
    Ok(())
}

fn summarise(
    args: &FaninArgs,
    setup: &Setup,
    results: &[(u8, Vec<(&'static str, Outcome)>)],
) -> Report {
    let mut rows = setup.describe(&args.mqtt);
    rows.push((
        "load".into(),
        format!(
            "{} publishers on bench/<i>/t, 1 {}subscriber on bench/#, {}-byte payloads, {} s, {}; QoS 0 unflushed bytes {}, QoS 1/2 window {}, SO_SNDBUF {}",
            args.publishers,
            if args.persistent_subscriber {
                "persistent-session "
            } else {
                ""
            },
            args.payload_bytes,
            args.duration_secs,
            if args.rate > 0 {
                format!("paced at {} messages/s in all", args.rate)
            } else {
                "as fast as the broker takes them".to_string()
            },
            args.unflushed_bytes,
            args.window,
            args.sndbuf_bytes
        ),
    ));
    let mut json = serde_json::json!({
        "scenario": SCENARIO,
        "publishers": args.publishers,
        "duration_s": args.duration_secs,
        "payload_bytes": args.payload_bytes,
        "window": args.window,
        "unflushed_bytes": args.unflushed_bytes,
        "sndbuf_bytes": args.sndbuf_bytes,
        "rate": args.rate,
        "kx": format!("{:?}", args.mqtt.kx).to_lowercase(),
        "mosquitto_version": setup.mosquitto_version,
    });
    for (qos, per_broker) in results {
        let row = |label: &str, f: &dyn Fn(&Outcome) -> String| {
            side_by_side(per_broker, &format!("QoS {qos} {label}"), f)
        };
        rows.push(row("received/s", &|o| format!("{:.0}", o.rate())));
        rows.push(row("sent/s", &|o| format!("{:.0}", o.sent_rate())));
        rows.push(row("sent / received / drops", &|o| {
            format!("{} / {} / {}", o.sent, o.received, o.drops())
        }));
        rows.push(row("latency ms (p50/p90/p99/max)", &|o| o.latency.line()));
        rows.push(row("CPU cores server/bench/other", &|o| o.cpu.line()));
        rows.push(row("server peak RSS", &|o| {
            format!("{:.1} MiB", o.peak_rss_kib as f64 / 1024.0)
        }));
        if per_broker.iter().any(|(_, o)| o.onramp.is_some()) {
            let g = |o: &Outcome| o.onramp.unwrap_or_default();
            rows.push(row(
                "gateway in / out / dropped (queue full, connection behind)",
                &|o| match o.onramp {
                    Some(_) => format!(
                        "{:.0} / {:.0} / {:.0}, {:.0}",
                        g(o).messages_in,
                        g(o).messages_out,
                        g(o).dropped_queue_full,
                        g(o).dropped_connection_behind
                    ),
                    None => "-".into(),
                },
            ));
            rows.push(row(
                "gateway publishers held (released / expired)",
                &|o| match o.onramp {
                    Some(_) => format!("{:.0} / {:.0}", g(o).held_released, g(o).held_expired),
                    None => "-".into(),
                },
            ));
        }
        if *qos >= 1 {
            rows.push(row("acknowledged to publishers", &|o| o.acked.to_string()));
            rows.push(row("acknowledged but never delivered", &|o| {
                o.lost_acknowledged().to_string()
            }));
        }
        if per_broker.iter().any(|(_, o)| o.out_of_order > 0) {
            rows.push(row("out of order", &|o| o.out_of_order.to_string()));
        }
        let r = match per_broker.as_slice() {
            [(_, o), (_, m)] => ratio(o.rate(), m.rate()),
            _ => None,
        };
        if per_broker.len() == 2 {
            rows.push((
                format!("QoS {qos} onramp / mosquitto"),
                format!("received/s {}", ratio_text(r)),
            ));
        }
        let mut q = serde_json::json!({ "ratio_received_per_s": r });
        for (name, o) in per_broker {
            q[*name] = o.json();
        }
        json[format!("qos{qos}")] = q;
    }
    // An acknowledged message is a promise: Onramp losing one fails the run.
    // The peer's losses are reported beside it but are not Onramp's failure.
    let failed = results
        .iter()
        .filter(|(qos, _)| *qos >= 1)
        .flat_map(|(_, per_broker)| per_broker.iter())
        .filter(|(name, _)| *name == "onramp")
        .map(|(_, o)| o.lost_acknowledged() as usize)
        .sum();
    json["onramp_lost_acknowledged"] = serde_json::json!(failed);
    Report {
        title: "MQTT fan-in (onramp-bench mqtt-fanin)".into(),
        rows,
        json,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_carries_time_publisher_and_sequence() {
        let p = PublisherRun {
            index: 7,
            qos: 0,
            window: 16,
            unflushed: 8192,
            payload: 64,
            rate: None,
            base: Instant::now(),
            start: Instant::now(),
            deadline: Instant::now(),
            drain: Duration::ZERO,
        };
        let mut buf = BytesMut::new();
        let a = p.payload_now(&mut buf, 41);
        let b = p.payload_now(&mut buf, 42);
        assert_eq!(a.len(), 64);
        assert_eq!(u32::from_be_bytes(a[8..12].try_into().unwrap()), 7);
        assert_eq!(u64::from_be_bytes(a[12..20].try_into().unwrap()), 41);
        assert_eq!(u64::from_be_bytes(b[12..20].try_into().unwrap()), 42);
        assert!(
            u64::from_be_bytes(b[0..8].try_into().unwrap())
                >= u64::from_be_bytes(a[0..8].try_into().unwrap())
        );
    }
}
