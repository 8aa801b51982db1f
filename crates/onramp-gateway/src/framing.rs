//! MQTT packets over a byte stream, with buffers that hold memory only while
//! they hold bytes.
//!
//! Most connections are idle most of the time: a device connects, subscribes
//! and then waits for minutes. `tokio_util::codec::Framed` keeps an 8 KiB read
//! buffer and an 8 KiB write buffer for the connection's whole life, which was
//! half of what an idle connection cost. Here the read buffer is released when
//! a read would wait with nothing buffered (no partial packet), and the write
//! buffer once everything in it has been written. A read that finds no buffer
//! first reads into a stack buffer, so waiting for the next packet allocates
//! nothing.

use bytes::{Buf, BytesMut};
use futures_util::{Sink, Stream};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};

/// The most read from the stream at once.
const READ_CHUNK: usize = 8 * 1024;
/// Bytes encoded before `poll_ready` writes them out (as `Framed`'s default).
const WRITE_HIGH_WATER: usize = 8 * 1024;

pub(crate) struct MqttFramed<T, C> {
    io: T,
    codec: C,
    read: BytesMut,
    write: BytesMut,
    eof: bool,
    errored: bool,
}

impl<T, C> MqttFramed<T, C> {
    pub(crate) fn new(io: T, codec: C) -> Self {
        MqttFramed {
            io,
            codec,
            read: BytesMut::new(),
            write: BytesMut::new(),
            eof: false,
            errored: false,
        }
    }

    pub(crate) fn codec_mut(&mut self) -> &mut C {
        &mut self.codec
    }

    /// Bytes allocated for reading now (0 while no partial packet is held
    /// and the connection waits for the next one).
    #[cfg(test)]
    pub(crate) fn read_capacity(&self) -> usize {
        self.read.capacity()
    }

    /// Bytes allocated for writing now (0 once everything was written).
    #[cfg(test)]
    pub(crate) fn write_capacity(&self) -> usize {
        self.write.capacity()
    }
}

impl<T: AsyncRead + Unpin, C: Unpin> MqttFramed<T, C> {
    /// Reads what the stream has now; `Ready(Ok(0))` is the end of it.
    ///
    /// Reads go through a stack buffer and are appended to the read buffer,
    /// so a read that waits has allocated nothing.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut stack);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Pending => {
                // Waiting with no partial packet: hold no buffer meanwhile.
                if self.read.is_empty() && self.read.capacity() > 0 {
                    self.read = BytesMut::new();
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                // A partial packet's buffer already has room for the whole
                // packet (the decoder reserves its length).
                let filled = buf.filled();
                self.read.extend_from_slice(filled);
                Poll::Ready(Ok(filled.len()))
            }
        }
    }
}

impl<T, C> Stream for MqttFramed<T, C>
where
    T: AsyncRead + Unpin,
    C: Decoder + Unpin,
{
    type Item = Result<C::Item, C::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.errored {
                return Poll::Ready(None);
            }
            if this.eof {
                if this.read.is_empty() {
                    return Poll::Ready(None);
                }
                return match this.codec.decode_eof(&mut this.read) {
                    Ok(Some(frame)) => Poll::Ready(Some(Ok(frame))),
                    Ok(None) => {
                        this.read = BytesMut::new();
                        Poll::Ready(None)
                    }
                    Err(e) => {
                        this.errored = true;
                        Poll::Ready(Some(Err(e)))
                    }
                };
            }
            if !this.read.is_empty() {
                match this.codec.decode(&mut this.read) {
                    Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                    Ok(None) => {}
                    Err(e) => {
                        this.errored = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) => this.eof = true,
                Ok(_) => {}
                Err(e) => {
                    this.errored = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

impl<T, C, I> Sink<I> for MqttFramed<T, C>
where
    T: AsyncWrite + Unpin,
    C: Encoder<I> + Unpin,
{
    type Error = C::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.write.len() >= WRITE_HIGH_WATER {
            self.poll_flush(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn start_send(self: Pin<&mut Self>, item: I) -> Result<(), Self::Error> {
        let this = self.get_mut();
        this.codec.encode(item, &mut this.write)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        while !this.write.is_empty() {
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, this.write.chunk()))?;
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write frame to transport",
                )
                .into()));
            }
            this.write.advance(n);
        }
        // All written: hold no buffer until the next packet.
        if this.write.capacity() > 0 {
            this.write = BytesMut::new();
        }
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.as_mut().poll_flush(cx))?;
        ready!(Pin::new(&mut self.get_mut().io).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use rmqtt_codec::{MqttCodec, MqttPacket, v3};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn publish(payload_len: usize) -> MqttPacket {
        MqttPacket::V3(v3::Packet::Publish(Box::new(rmqtt_codec::types::Publish {
            dup: false,
            retain: false,
            qos: rmqtt_codec::types::QoS::AtLeastOnce,
            topic: "t/a".into(),
            packet_id: std::num::NonZeroU16::new(7),
            payload: bytes::Bytes::from(vec![0x5a; payload_len]),
            properties: None,
        })))
    }

    fn encoded(packet: MqttPacket) -> Vec<u8> {
        let mut codec = MqttCodec::V3(v3::Codec::new(1 << 20));
        let mut out = BytesMut::new();
        codec.encode(packet, &mut out).expect("encodes");
        out.to_vec()
    }

    /// Polls the stream once without waiting; `None` when it would wait.
    fn poll_once<S: Stream + Unpin>(s: &mut S) -> Option<Option<S::Item>> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match s.poll_next_unpin(&mut cx) {
            Poll::Ready(item) => Some(item),
            Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_read_or_write_buffer() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut framed = MqttFramed::new(server, MqttCodec::V3(v3::Codec::new(1 << 20)));
        // Before anything arrives, nothing is allocated for reading.
        assert!(poll_once(&mut framed).is_none());
        assert_eq!(framed.read_capacity(), 0);
        assert_eq!(framed.write_capacity(), 0);

        // A packet read, then the wait for the next one: the buffer is gone.
        client
            .write_all(&encoded(publish(3000)))
            .await
            .expect("written");
        let packet = framed.next().await.expect("a packet").expect("decoded");
        assert!(matches!(
            packet,
            (MqttPacket::V3(v3::Packet::Publish(_)), _)
        ));
        assert!(poll_once(&mut framed).is_none());
        assert_eq!(framed.read_capacity(), 0);

        // A packet written and flushed: the write buffer is gone too.
        framed
            .send(MqttPacket::V3(v3::Packet::PingResponse))
            .await
            .expect("sent");
        assert_eq!(framed.write_capacity(), 0);
        let mut pong = [0u8; 2];
        client.read_exact(&mut pong).await.expect("read");
        assert_eq!(pong, [0xd0, 0x00]);
    }

    #[tokio::test]
    async fn a_packet_split_across_reads_is_held_until_complete() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut framed = MqttFramed::new(server, MqttCodec::V3(v3::Codec::new(1 << 20)));
        let bytes = encoded(publish(10_000));
        let (head, tail) = bytes.split_at(5_000);
        client.write_all(head).await.expect("written");
        client.flush().await.expect("flushed");
        // Half a packet: nothing decoded, and the half is kept.
        assert!(poll_once(&mut framed).is_none());
        assert!(framed.read_capacity() >= head.len());
        client.write_all(tail).await.expect("written");
        let (packet, _) = framed.next().await.expect("a packet").expect("decoded");
        let MqttPacket::V3(v3::Packet::Publish(p)) = packet else {
            panic!("not a publish: {packet:?}");
        };
        assert_eq!(p.payload.len(), 10_000);
        assert!(poll_once(&mut framed).is_none());
        assert_eq!(framed.read_capacity(), 0);
    }

    #[tokio::test]
    async fn packets_arriving_together_are_all_decoded_then_the_end_is_seen() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut framed = MqttFramed::new(server, MqttCodec::V3(v3::Codec::new(1 << 20)));
        let mut bytes = Vec::new();
        for n in [10, 5_000, 20] {
            bytes.extend(encoded(publish(n)));
        }
        bytes.extend(encoded(MqttPacket::V3(v3::Packet::PingRequest)));
        client.write_all(&bytes).await.expect("written");
        drop(client);
        let mut lens = Vec::new();
        while let Some(item) = framed.next().await {
            match item.expect("decoded").0 {
                MqttPacket::V3(v3::Packet::Publish(p)) => lens.push(p.payload.len()),
                MqttPacket::V3(v3::Packet::PingRequest) => lens.push(0),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(lens, [10, 5_000, 20, 0]);
    }

    #[tokio::test]
    async fn a_truncated_packet_at_the_end_is_an_error() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut framed = MqttFramed::new(server, MqttCodec::V3(v3::Codec::new(1 << 20)));
        let bytes = encoded(publish(100));
        client.write_all(&bytes[..50]).await.expect("written");
        drop(client);
        assert!(matches!(framed.next().await, Some(Err(_))));
        assert!(framed.next().await.is_none());
    }
}
