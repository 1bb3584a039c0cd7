//! Reading and writing length-prefixed frames on QUIC streams, with a deadline on every read.

use std::time::Duration;

use cairn_core::wire::{self, Bounded};
use iroh::endpoint::{RecvStream, SendStream};
use serde::{Serialize, de::DeserializeOwned};

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
    let frame = wire::encode_frame(msg);
    send.write_all(&frame)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))?;
    Ok(frame.len())
}

/// Reads one frame and decodes it; the size is checked before the body is read.
pub(crate) async fn read_frame<T: DeserializeOwned + Bounded>(
    recv: &mut RecvStream,
    deadline: Duration,
) -> Result<(T, usize), FrameError> {
    tokio::time::timeout(deadline, async {
        let mut prefix = [0u8; 4];
        recv.read_exact(&mut prefix)
            .await
            .map_err(|e| FrameError::Io(e.to_string()))?;
        let len = wire::frame_len(prefix).map_err(FrameError::Wire)?;
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body)
            .await
            .map_err(|e| FrameError::Io(e.to_string()))?;
        let msg = wire::decode(&body).map_err(FrameError::Wire)?;
        Ok((msg, len + 4))
    })
    .await
    .map_err(|_| FrameError::Timeout)?
}
