//! The byte stream of an interactive exec (`kapsel exec -t`).
//!
//! The client sends `POST /v1/instances/{name}/exec` with `"interactive": true` (and
//! `"tty": true`). When the command has started, the daemon answers `101 Switching
//! Protocols` with `Upgrade: kapsel-exec` and no body; from then on both sides exchange
//! frames on the same connection until the daemon sends [`Frame::Exit`] and closes it. A
//! refused request gets an ordinary JSON error instead.
//!
//! A frame is one kind byte, a 4-byte big-endian payload length (at most [`MAX_PAYLOAD`])
//! and the payload:
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | 0 [`Frame::Stdin`] | client → daemon | bytes for the terminal |
//! | 1 [`Frame::StdinEof`] | client → daemon | none: input ended (the terminal's end-of-file character is typed) |
//! | 2 [`Frame::Resize`] | client → daemon | rows, columns: two big-endian `u16` |
//! | 3 [`Frame::Output`] | daemon → client | what the command wrote to its terminal |
//! | 4 [`Frame::Exit`] | daemon → client | the exit code, big-endian `i32` (128 + signal when killed) |
//!
//! A client that goes away hangs the terminal up (SIGHUP to the command's session).

use std::io::{self, Read};

/// The protocol name in the `Upgrade` header.
pub const UPGRADE: &str = "kapsel-exec";
/// Longest payload of one frame.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// One message of an interactive exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Stdin(Vec<u8>),
    StdinEof,
    Resize { rows: u16, cols: u16 },
    Output(Vec<u8>),
    Exit(i32),
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Stdin(_) => 0,
            Frame::StdinEof => 1,
            Frame::Resize { .. } => 2,
            Frame::Output(_) => 3,
            Frame::Exit(_) => 4,
        }
    }

    /// The frame on the wire. Data longer than [`MAX_PAYLOAD`] must be split by the caller
    /// (see [`Frame::data_frames`]).
    pub fn encode(&self) -> Vec<u8> {
        let payload: Vec<u8> = match self {
            Frame::Stdin(b) | Frame::Output(b) => b.clone(),
            Frame::StdinEof => Vec::new(),
            Frame::Resize { rows, cols } => [rows.to_be_bytes(), cols.to_be_bytes()].concat(),
            Frame::Exit(code) => code.to_be_bytes().to_vec(),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(self.kind());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// `data` as frames made by `make`, each at most [`MAX_PAYLOAD`] long.
    pub fn data_frames(data: &[u8], make: fn(Vec<u8>) -> Frame) -> Vec<u8> {
        data.chunks(MAX_PAYLOAD)
            .flat_map(|c| make(c.to_vec()).encode())
            .collect()
    }

    /// Reads one frame; `Ok(None)` when the stream ends between frames. A frame of unknown
    /// kind, an oversized length or a payload of the wrong size is `InvalidData`.
    pub fn read(r: &mut impl Read) -> io::Result<Option<Frame>> {
        let mut head = [0u8; 5];
        let mut got = 0;
        while got < head.len() {
            match r.read(&mut head[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        if len > MAX_PAYLOAD {
            return Err(bad(format!(
                "exec frame of {len} bytes (at most {MAX_PAYLOAD})"
            )));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        let fixed = |want: usize| {
            if len == want {
                Ok(())
            } else {
                Err(bad(format!(
                    "exec frame of kind {} with {len} bytes, not {want}",
                    head[0]
                )))
            }
        };
        Ok(Some(match head[0] {
            0 => Frame::Stdin(payload),
            1 => {
                fixed(0)?;
                Frame::StdinEof
            }
            2 => {
                fixed(4)?;
                Frame::Resize {
                    rows: u16::from_be_bytes([payload[0], payload[1]]),
                    cols: u16::from_be_bytes([payload[2], payload[3]]),
                }
            }
            3 => Frame::Output(payload),
            4 => {
                fixed(4)?;
                Frame::Exit(i32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]))
            }
            k => return Err(bad(format!("unknown exec frame kind {k}"))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames = [
            Frame::Stdin(b"echo hi\n".to_vec()),
            Frame::StdinEof,
            Frame::Resize {
                rows: 50,
                cols: 132,
            },
            Frame::Output(Vec::new()),
            Frame::Exit(-3),
        ];
        let wire: Vec<u8> = frames.iter().flat_map(Frame::encode).collect();
        let mut r = wire.as_slice();
        for f in &frames {
            assert_eq!(Frame::read(&mut r).unwrap().as_ref(), Some(f));
        }
        assert_eq!(Frame::read(&mut r).unwrap(), None);
    }

    #[test]
    fn long_data_is_split() {
        let data = vec![7u8; MAX_PAYLOAD + 10];
        let wire = Frame::data_frames(&data, Frame::Output);
        let mut r = wire.as_slice();
        let a = Frame::read(&mut r).unwrap().unwrap();
        let b = Frame::read(&mut r).unwrap().unwrap();
        assert_eq!(a, Frame::Output(vec![7; MAX_PAYLOAD]));
        assert_eq!(b, Frame::Output(vec![7; 10]));
    }

    #[test]
    fn hostile_frames_are_errors() {
        let too_long = [0u8, 0, 1, 0, 1];
        let unknown = [9u8, 0, 0, 0, 0];
        let short_resize = [2u8, 0, 0, 0, 2, 0, 1];
        let cut = [0u8, 0, 0];
        let cut_payload = [0u8, 0, 0, 0, 5, b'a'];
        for wire in [&too_long[..], &unknown, &short_resize, &cut, &cut_payload] {
            assert!(Frame::read(&mut &wire[..]).is_err(), "{wire:?}");
        }
    }
}
