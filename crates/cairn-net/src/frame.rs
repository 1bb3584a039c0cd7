//! Reading and writing length-prefixed frames on QUIC streams, with a deadline on every read.

use std::time::Duration;

use cairn_core::wire::{self, Bounded};
use iroh::endpoint::{RecvStream, SendStream};
use serde::{Serialize, de::DeserializeOwned};

/// The most a frame buffer is sized for before its bytes arrive: a 4 MiB share and its header.
const PREALLOC_LIMIT: usize = 4 * 1024 * 1024 + 64 * 1024;

/// What went wrong reading or writing a frame, before the caller adds the peer's name.
#[derive(Debug)]
pub(crate) enum FrameError {
    Io(String),
    Wire(wire::WireError),
    Timeout,
}

pub(crate) async fn write_frame<T: Serialize>(
    send: &mut SendStream,
    msg: &T,
) -> Result<usize, FrameError> {
    // Handed over as `Bytes`: the stream keeps the buffer instead of copying it.
    let frame = bytes::Bytes::from(wire::encode_frame(msg));
    let len = frame.len();
    send.write_chunk(frame)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))?;
    Ok(len)
}

/// Reads one frame of at most `max` bytes and decodes it. The announced size is checked before
/// the body is read, and the buffer grows only as bytes arrive, so a peer that announces much
/// and sends little costs little.
pub(crate) async fn read_frame<T: DeserializeOwned + Bounded>(
    recv: &mut RecvStream,
    deadline: Duration,
    max: usize,
) -> Result<(T, usize), FrameError> {
    tokio::time::timeout(deadline, async {
        let mut prefix = [0u8; 4];
        recv.read_exact(&mut prefix)
            .await
            .map_err(|e| FrameError::Io(e.to_string()))?;
        let len = wire::frame_len(prefix).map_err(FrameError::Wire)?;
        if len > max {
            return Err(FrameError::Wire(wire::WireError::TooLarge { len, max }));
        }
        // Room for any data share at once (no regrowing copies); larger frames grow as their
        // bytes arrive.
        let mut body = Vec::with_capacity(len.min(PREALLOC_LIMIT));
        while body.len() < len {
            let chunk = recv
                .read_chunk(len - body.len())
                .await
                .map_err(|e| FrameError::Io(e.to_string()))?
                .ok_or_else(|| FrameError::Io("stream ended inside a frame".into()))?;
            body.extend_from_slice(&chunk);
        }
        let msg = wire::decode(&body).map_err(FrameError::Wire)?;
        Ok((msg, len + 4))
    })
    .await
    .map_err(|_| FrameError::Timeout)?
}
