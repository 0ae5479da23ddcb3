//! Length-prefixed frames: a 4-byte little-endian length, then that many bytes of payload.
//!
//! This is the browser native-messaging framing, so the same bytes can flow from a browser
//! through the native-messaging host to the daemon unchanged. Payloads are capped at
//! [`MAX_FRAME_LEN`]; an oversized header is rejected before any of its payload is read.

use std::io::{self, IoSlice};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload a frame may carry: 1 MiB.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Size of the length header in bytes.
pub const HEADER_LEN: usize = 4;

/// Payloads up to this size are read into a buffer allocated once, so that a request carrying a
/// PIN is never copied by reallocation into memory nobody will zeroize. Larger ones grow as bytes
/// arrive, so a peer announcing 1 MiB and sending nothing cannot make us hold 1 MiB.
const PREALLOCATE_LIMIT: usize = 64 * 1024;

/// Errors reading or writing a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame's length exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the 1 MiB limit")]
    TooLarge {
        /// The announced (or attempted) payload length.
        len: u64,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// The underlying stream failed.
    #[error("i/o error on frame stream: {0}")]
    Io(#[from] io::Error),
}

/// Reads one frame and returns its payload.
///
/// Returns `Ok(None)` on a clean end of stream, i.e. before the first header byte. A header
/// announcing more than [`MAX_FRAME_LEN`] fails with [`FrameError::TooLarge`] without reading the
/// payload; the stream is then out of sync and should be closed.
///
/// Not cancel-safe: if the future is dropped part-way, the bytes already consumed are lost.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let n = read_retrying(r, &mut header).await?;
    if n == 0 {
        return Ok(None);
    }
    read_frame_rest(r, header, n).await.map(Some)
}

/// Finishes a frame whose first `filled` header bytes (at least one) are already in `header`.
///
/// Lets the server wait for the first byte under its idle timeout and read the rest under the
/// shorter frame timeout, without a read buffer that would keep copies of request bytes.
pub(crate) async fn read_frame_rest<R: AsyncRead + Unpin>(
    r: &mut R,
    mut header: [u8; HEADER_LEN],
    mut filled: usize,
) -> Result<Vec<u8>, FrameError> {
    while filled < HEADER_LEN {
        let n = read_retrying(r, &mut header[filled..]).await?;
        if n == 0 {
            return Err(FrameError::Truncated);
        }
        filled += n;
    }

    let len = u32::from_le_bytes(header);
    let len_usize = usize::try_from(len).map_err(|_| FrameError::TooLarge {
        len: u64::from(len),
    })?;
    if len_usize > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
        });
    }

    let mut payload = Vec::new();
    if len_usize <= PREALLOCATE_LIMIT {
        payload.resize(len_usize, 0);
        r.read_exact(&mut payload)
            .await
            .map_err(eof_is_truncation)?;
    } else {
        payload.reserve(PREALLOCATE_LIMIT);
        let read = r
            .take(u64::from(len))
            .read_to_end(&mut payload)
            .await
            .map_err(eof_is_truncation)?;
        if read != len_usize {
            return Err(FrameError::Truncated);
        }
    }
    Ok(payload)
}

async fn read_retrying<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<usize, FrameError> {
    loop {
        match r.read(buf).await {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
}

/// Writes `payload` as one frame and flushes.
///
/// Fails with [`FrameError::TooLarge`] (writing nothing) if the payload exceeds
/// [`MAX_FRAME_LEN`]. Header and payload go out in one vectored write where the stream allows.
///
/// Not cancel-safe: a dropped future may leave half a frame on the stream.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len as usize <= MAX_FRAME_LEN)
        .ok_or(FrameError::TooLarge {
            len: payload.len() as u64,
        })?;
    let header = len.to_le_bytes();

    let mut slices = [IoSlice::new(&header), IoSlice::new(payload)];
    let mut remaining: &mut [IoSlice<'_>] = &mut slices;
    // Skip an empty payload slice so the loop ends once the header is out.
    while remaining.iter().any(|s| !s.is_empty()) {
        let n = match w.write_vectored(remaining).await {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        };
        if n == 0 {
            return Err(FrameError::Io(io::ErrorKind::WriteZero.into()));
        }
        IoSlice::advance_slices(&mut remaining, n);
    }
    w.flush().await?;
    Ok(())
}

fn eof_is_truncation(e: io::Error) -> FrameError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        FrameError::Truncated
    } else {
        FrameError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    /// A reader over fixed bytes that records how far it has been read.
    struct CountingReader {
        data: Vec<u8>,
        pos: usize,
    }

    impl AsyncRead for CountingReader {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = buf.remaining().min(self.data.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.data[start..start + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn round_trip_through_a_pipe() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let payload = br#"{"id":1,"type":"status"}"#.to_vec();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            write_frame(&mut a, &sent).await.unwrap();
            write_frame(&mut a, b"").await.unwrap();
        });
        assert_eq!(read_frame(&mut b).await.unwrap(), Some(payload));
        assert_eq!(read_frame(&mut b).await.unwrap(), Some(Vec::new()));
        writer.await.unwrap();
        assert_eq!(read_frame(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn header_is_little_endian() {
        let mut out = Vec::new();
        write_frame(&mut out, &[0xAA; 0x0102]).await.unwrap();
        assert_eq!(&out[..4], &[0x02, 0x01, 0x00, 0x00]);
        assert_eq!(out.len(), 4 + 0x0102);
    }

    #[tokio::test]
    async fn exactly_one_mib_is_accepted() {
        let payload = vec![b'x'; MAX_FRAME_LEN];
        let mut out = Vec::new();
        write_frame(&mut out, &payload).await.unwrap();
        let mut input = out.as_slice();
        let got = read_frame(&mut input).await.unwrap().unwrap();
        assert_eq!(got.len(), MAX_FRAME_LEN);
        assert!(input.is_empty());
    }

    #[tokio::test]
    async fn one_byte_over_is_rejected_without_reading_the_body() {
        let mut data = ((MAX_FRAME_LEN + 1) as u32).to_le_bytes().to_vec();
        data.extend(std::iter::repeat_n(b'x', MAX_FRAME_LEN + 1));
        let mut reader = CountingReader { data, pos: 0 };
        match read_frame(&mut reader).await {
            Err(FrameError::TooLarge { len }) => assert_eq!(len, MAX_FRAME_LEN as u64 + 1),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(reader.pos, HEADER_LEN, "no payload byte may be consumed");
    }

    #[tokio::test]
    async fn largest_header_is_rejected() {
        let mut input: &[u8] = &[0xFF, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            read_frame(&mut input).await,
            Err(FrameError::TooLarge { len }) if len == u64::from(u32::MAX)
        ));
    }

    #[tokio::test]
    async fn writing_an_oversized_payload_writes_nothing() {
        let mut out = Vec::new();
        let err = write_frame(&mut out, &vec![0; MAX_FRAME_LEN + 1])
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len } if len == MAX_FRAME_LEN as u64 + 1));
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn truncated_header() {
        let mut input: &[u8] = &[5, 0];
        assert!(matches!(
            read_frame(&mut input).await,
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn truncated_small_body() {
        let mut data = framed(b"hello");
        data.truncate(data.len() - 2);
        let mut input = data.as_slice();
        assert!(matches!(
            read_frame(&mut input).await,
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn truncated_large_body() {
        let mut data = framed(&vec![7; PREALLOCATE_LIMIT * 2]);
        data.truncate(data.len() - 1);
        let mut input = data.as_slice();
        assert!(matches!(
            read_frame(&mut input).await,
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn large_body_round_trip() {
        let payload: Vec<u8> = (0..PREALLOCATE_LIMIT * 3)
            .map(|i| (i % 251) as u8)
            .collect();
        let data = framed(&payload);
        let mut input = data.as_slice();
        assert_eq!(read_frame(&mut input).await.unwrap(), Some(payload));
    }

    #[tokio::test]
    async fn clean_eof_is_none() {
        let mut input: &[u8] = &[];
        assert!(read_frame(&mut input).await.unwrap().is_none());
    }
}
