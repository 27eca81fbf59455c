//! Datagrams over TCP (the fallback where UDP is blocked): each datagram is
//! a 2-byte big-endian length and the bytes, both ways between an agent and
//! a rendezvous.
//!
//! A frame's buffer grows only as its bytes arrive: a header that claims
//! 64 KiB costs nothing until the peer has sent them.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest datagram carried in one frame.
pub const MAX_FRAME_LEN: usize = 65_535;

/// Reads one frame into `buf` (replacing its contents); `Ok(None)` at a
/// clean end of stream.
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<()>> {
    let mut first = [0u8; 1];
    if reader.read(&mut first).await? == 0 {
        return Ok(None);
    }
    read_rest_of_frame(reader, first[0], buf).await.map(Some)
}

/// Reads one frame like [`read_frame`], waiting at most `idle` for its first
/// byte and `slow` for the rest of it; either wait running out is a
/// [`io::ErrorKind::TimedOut`] error.
pub async fn read_frame_within<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    idle: Duration,
    slow: Duration,
) -> io::Result<Option<()>> {
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(idle, reader.read(&mut first))
        .await
        .map_err(|_| timed_out("no frame began in time"))??;
    if read == 0 {
        return Ok(None);
    }
    tokio::time::timeout(slow, read_rest_of_frame(reader, first[0], buf))
        .await
        .map_err(|_| timed_out("a frame did not complete in time"))??;
    Ok(Some(()))
}

/// Reads the second header byte and the body of a frame.
async fn read_rest_of_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    first: u8,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let second = reader.read_u8().await?;
    let len = usize::from(u16::from_be_bytes([first, second]));
    buf.clear();
    // `take` + `read_to_end` grows the buffer with what arrives, never to
    // the claimed length up front.
    (&mut *reader).take(len as u64).read_to_end(buf).await?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the stream ended inside a frame",
        ));
    }
    Ok(())
}

fn timed_out(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWriteExt + Unpin>(
    writer: &mut W,
    datagram: &[u8],
) -> io::Result<()> {
    let len = u16::try_from(datagram.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "datagram too large for a frame",
        )
    })?;
    let mut frame = Vec::with_capacity(2 + datagram.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(datagram);
    writer.write_all(&frame).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    #[tokio::test]
    async fn frames_round_trip_and_end_cleanly() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, b"hello").await.expect("write");
        write_frame(&mut a, b"").await.expect("write");
        drop(a);
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut b, &mut buf).await.expect("read"), Some(()));
        assert_eq!(buf, b"hello");
        assert_eq!(read_frame(&mut b, &mut buf).await.expect("read"), Some(()));
        assert!(buf.is_empty());
        assert_eq!(read_frame(&mut b, &mut buf).await.expect("read"), None);
    }

    #[tokio::test]
    async fn header_claiming_64_kib_allocates_only_what_arrived() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(&[0xff, 0xff]).await.expect("header");
        a.write_all(&[7; 100]).await.expect("first bytes");
        let mut buf = Vec::new();
        {
            let read = read_frame(&mut b, &mut buf);
            let mut read = std::pin::pin!(read);
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            // Everything sent is read; the frame is still incomplete.
            assert!(read.as_mut().poll(&mut context).is_pending());
        }
        assert_eq!(buf.len(), 100);
        assert!(
            buf.capacity() < 4096,
            "a 64 KiB header made a {} byte buffer after 100 bytes",
            buf.capacity()
        );
    }

    #[tokio::test]
    async fn frame_cut_short_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 10, 1, 2, 3]).await.expect("partial frame");
        drop(a);
        let mut buf = Vec::new();
        let error = read_frame(&mut b, &mut buf).await.expect_err("cut short");
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn oversized_datagram_is_refused() {
        let (mut a, _b) = tokio::io::duplex(16);
        assert!(
            write_frame(&mut a, &vec![0; MAX_FRAME_LEN + 1])
                .await
                .is_err()
        );
    }
}
