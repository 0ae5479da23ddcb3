//! Framing of `/passmesh/sync/2`: one stream per message, `u32` big-endian length then the bytes; the receiver
//! answers with a single acknowledgement byte once the message is queued for the application.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use libp2p::request_response;

/// The sync protocol name. Version 2: the daemon puts its vault's 16-byte id in front of every message (one
/// host may carry several vaults); this crate still moves the bytes as they are.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/passmesh/sync/2");

const ACK: u8 = 0x06;
/// Initial buffer size for a frame, so a peer announcing a large frame cannot make us allocate it up front.
const INITIAL_CAPACITY: usize = 64 * 1024;

/// Why a frame was rejected.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The announced length exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u64, max: usize },
    /// The stream ended inside the frame.
    #[error("truncated frame")]
    Truncated,
    /// The acknowledgement byte was wrong.
    #[error("bad acknowledgement")]
    BadAck,
}

/// One sync message as the request-response layer sees it. A rejected inbound frame is handed up as a value
/// rather than an `io::Error`, because request-response drops read errors without telling the behaviour, and the
/// host must report the offending peer.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A complete message.
    Bytes(Vec<u8>),
    /// An inbound frame that was refused; the rest of the stream is left unread and the stream is dropped.
    Rejected(FrameError),
}

/// Length-limited codec for opaque byte messages.
#[derive(Debug, Clone)]
pub(crate) struct Codec {
    max: usize,
}

impl Codec {
    pub(crate) fn new(max: usize) -> Self {
        Self { max }
    }
}

pub(crate) async fn read_frame<T: AsyncRead + Unpin>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u64::from(u32::from_be_bytes(len));
    if len > max as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            FrameError::TooLarge { len, max },
        ));
    }
    let cap = usize::try_from(len).map_or(INITIAL_CAPACITY, |l| l.min(INITIAL_CAPACITY));
    let mut buf = Vec::with_capacity(cap);
    io.take(len).read_to_end(&mut buf).await?;
    if buf.len() as u64 != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

pub(crate) async fn write_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    // The local side checks sizes before queueing; this guards the wire format itself.
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|_| bytes.len() <= max)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                FrameError::TooLarge {
                    len: bytes.len() as u64,
                    max,
                },
            )
        })?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.flush().await
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        match read_frame(io, self.max).await {
            Ok(bytes) => Ok(Frame::Bytes(bytes)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Ok(Frame::Rejected(FrameError::Truncated))
            }
            Err(e) => match e.into_inner().map(|inner| inner.downcast::<FrameError>()) {
                Some(Ok(rejected)) => Ok(Frame::Rejected(*rejected)),
                Some(Err(other)) => Err(io::Error::other(other)),
                None => Err(io::ErrorKind::InvalidData.into()),
            },
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut ack = [0u8; 1];
        io.read_exact(&mut ack).await?;
        if ack[0] != ACK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                FrameError::BadAck,
            ));
        }
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        match req {
            Frame::Bytes(bytes) => write_frame(io, &bytes, self.max).await,
            Frame::Rejected(e) => Err(io::Error::new(io::ErrorKind::InvalidInput, e)),
        }
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, (): ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[ACK]).await?;
        io.flush().await
    }
}

/// Codec of `/passmesh/pair/1`: one length-prefixed request and one length-prefixed response per stream, each
/// at most [`crate::pairing::MAX_MESSAGE`] bytes. Oversized or truncated input is an error: the stream drops.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PairCodec;

impl request_response::Codec for PairCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, crate::pairing::MAX_MESSAGE).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, crate::pairing::MAX_MESSAGE).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, crate::pairing::MAX_MESSAGE).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, crate::pairing::MAX_MESSAGE).await
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::io::Cursor;

    use super::*;

    fn frame_error(e: &io::Error) -> Option<&FrameError> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<FrameError>())
    }

    #[test]
    fn round_trip_at_the_limit() {
        let msg = vec![7u8; 1000];
        let mut wire = Cursor::new(Vec::new());
        block_on(write_frame(&mut wire, &msg, 1000)).unwrap();
        assert_eq!(wire.get_ref().len(), 1004);
        wire.set_position(0);
        assert_eq!(block_on(read_frame(&mut wire, 1000)).unwrap(), msg);
    }

    #[test]
    fn oversized_announcement_is_rejected_before_reading_the_body() {
        let mut wire = Cursor::new(u32::MAX.to_be_bytes().to_vec());
        let err = block_on(read_frame(&mut wire, 1000)).unwrap_err();
        assert!(
            matches!(frame_error(&err), Some(FrameError::TooLarge { len, max: 1000 }) if *len == u64::from(u32::MAX))
        );
        let mut wire = Cursor::new(1001u32.to_be_bytes().to_vec());
        assert!(block_on(read_frame(&mut wire, 1000)).is_err());
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error_not_a_panic() {
        for bytes in [
            vec![],
            vec![0u8, 0],
            vec![0, 0, 0, 10, 1, 2, 3],
            vec![0xff; 3],
        ] {
            let mut wire = Cursor::new(bytes);
            assert!(block_on(read_frame(&mut wire, 1000)).is_err());
        }
    }

    #[test]
    fn codec_hands_rejections_up_as_values() {
        use request_response::Codec as _;
        let mut codec = Codec::new(10);
        let read = |bytes: Vec<u8>| {
            let mut codec = codec.clone();
            block_on(async move { codec.read_request(&PROTOCOL, &mut Cursor::new(bytes)).await })
        };
        assert!(matches!(read(vec![0, 0, 0, 2, 9, 9]), Ok(Frame::Bytes(b)) if b == [9, 9]));
        assert!(matches!(
            read(vec![0, 0, 0, 11]),
            Ok(Frame::Rejected(FrameError::TooLarge { len: 11, max: 10 }))
        ));
        assert!(matches!(
            read(vec![0, 0, 0, 5, 1]),
            Ok(Frame::Rejected(FrameError::Truncated))
        ));
        let mut out = Cursor::new(Vec::new());
        assert!(
            block_on(codec.write_request(&PROTOCOL, &mut out, Frame::Bytes(vec![0; 11]))).is_err()
        );
        assert!(out.get_ref().is_empty());
    }

    #[test]
    fn local_oversized_write_is_refused() {
        let mut wire = Cursor::new(Vec::new());
        assert!(block_on(write_frame(&mut wire, &[0u8; 11], 10)).is_err());
        assert!(wire.get_ref().is_empty());
    }
}
