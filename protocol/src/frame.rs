//! Framing: a 4-byte big-endian length, then a body, with a hard maximum. The body is
//! postcard, or JSON on a control connection from 1.5 on ([`Wire::format`]); it is
//! written for, and read at, the connection's negotiated versions ([`crate::wire`]).
//!
//! The async side is tokio-util's `LengthDelimitedCodec` behind a thin [`FrameCodec`] that
//! turns its failures into [`ProtocolError`]s; the blocking side ([`read_sync`],
//! [`write_sync`]) reads and writes the very same bytes for the worker.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::{
    error::ProtocolError,
    wire::{self, Evolve, Format, Wire},
};

/// The largest frame body either side accepts or sends: 16 MiB.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
const HEADER: usize = 4;

/// Serializes a message into a postcard frame body at this build's versions (or at the
/// wire [`wire::with`] set).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let body = postcard::to_allocvec(msg)?;
    check_len(body)
}

fn check_len(body: Vec<u8>) -> Result<Vec<u8>, ProtocolError> {
    if body.len() > MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge {
            len: body.len(),
            max: MAX_FRAME,
        });
    }
    Ok(body)
}

/// Serializes a message for a peer at `wire`: fitted to its versions first ([`Evolve`]);
/// `Ok(None)` when the message is one the peer cannot receive (it is dropped).
pub fn encode_at<T: Serialize + Evolve>(
    msg: &T,
    wire: Wire,
) -> Result<Option<Vec<u8>>, ProtocolError> {
    if !msg.fits(wire).map_err(ProtocolError::Unsupported)? {
        return Ok(None);
    }
    wire::with(wire, || match wire.format() {
        Format::Postcard => encode(msg),
        Format::Json => check_len(serde_json::to_vec(msg)?),
    })
    .map(Some)
}

/// Deserializes a frame body written at `wire`.
pub fn decode_at<T: DeserializeOwned>(body: &[u8], wire: Wire) -> Result<T, ProtocolError> {
    wire::with(wire, || match wire.format() {
        Format::Postcard => decode(body),
        Format::Json => Ok(serde_json::from_slice(body)?),
    })
}

/// Deserializes a postcard frame body at this build's versions (or at the wire
/// [`wire::with`] set); bytes left over after the message are an error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    let (msg, rest) = postcard::take_from_bytes(body)?;
    if !rest.is_empty() {
        return Err(ProtocolError::Unexpected(format!(
            "{} bytes after the end of the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// The async codec: length-delimited frames of at most [`MAX_FRAME`] bytes.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(HEADER)
                .max_frame_length(MAX_FRAME)
                .new_codec(),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
        // Check the announced length before the inner codec reserves room for it, and
        // hand the inner codec whole frames only: it consumes the header as soon as it
        // sees one, after which `src` starts with body bytes that must not be read as a
        // length on the next call.
        if src.len() < HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > MAX_FRAME {
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: MAX_FRAME,
            });
        }
        if src.len() < HEADER + len {
            src.reserve(HEADER + len - src.len());
            return Ok(None);
        }
        Ok(self.inner.decode(src)?)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ProtocolError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        if body.len() > MAX_FRAME {
            return Err(ProtocolError::FrameTooLarge {
                len: body.len(),
                max: MAX_FRAME,
            });
        }
        Ok(self.inner.encode(body, dst)?)
    }
}

/// Writes one message as a postcard frame at this build's versions (blocking).
pub fn write_sync<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), ProtocolError> {
    write_body(w, &encode(msg)?)
}

/// Writes one message as a frame for a peer at `wire` (blocking); a message the peer
/// cannot receive is dropped.
pub fn write_sync_at<T: Serialize + Evolve>(
    w: &mut impl Write,
    msg: &T,
    wire: Wire,
) -> Result<(), ProtocolError> {
    match encode_at(msg, wire)? {
        Some(body) => write_body(w, &body),
        None => Ok(()),
    }
}

fn write_body(w: &mut impl Write, body: &[u8]) -> Result<(), ProtocolError> {
    let mut buf = Vec::with_capacity(HEADER + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one postcard message at this build's versions (blocking). `Ok(None)` is a clean
/// end of stream between frames.
pub fn read_sync<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, ProtocolError> {
    read_body(r)?.map(|b| decode(&b)).transpose()
}

/// Reads one message written at `wire` (blocking). `Ok(None)` is a clean end of stream
/// between frames.
pub fn read_sync_at<T: DeserializeOwned>(
    r: &mut impl Read,
    wire: Wire,
) -> Result<Option<T>, ProtocolError> {
    read_body(r)?.map(|b| decode_at(&b, wire)).transpose()
}

fn read_body(r: &mut impl Read) -> Result<Option<Vec<u8>>, ProtocolError> {
    let mut header = [0u8; HEADER];
    let got = read_full(r, &mut header)?;
    if got == 0 {
        return Ok(None);
    }
    if got < HEADER {
        return Err(ProtocolError::Truncated { buffered: got });
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::FrameTooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got < len {
        return Err(ProtocolError::Truncated {
            buffered: HEADER + got,
        });
    }
    Ok(Some(body))
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
