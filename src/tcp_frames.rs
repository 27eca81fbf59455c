//! Datagrams over TCP (the fallback where UDP is blocked): each datagram is
//! a 2-byte big-endian length and the bytes, both ways between an agent and
//! a rendezvous.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest datagram carried in one frame.
pub const MAX_FRAME_LEN: usize = 65_535;

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<()>> {
    let mut header = [0u8; 2];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let len = usize::from(u16::from_be_bytes(header));
    buf.resize(len, 0);
    reader.read_exact(buf).await?;
    Ok(Some(()))
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
    async fn oversized_datagram_is_refused() {
        let (mut a, _b) = tokio::io::duplex(16);
        assert!(
            write_frame(&mut a, &vec![0; MAX_FRAME_LEN + 1])
                .await
                .is_err()
        );
    }
}
