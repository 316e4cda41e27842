//! Minimal, blocking HTTP/1.1 framing for kapsel's UNIX-socket APIs: one request and one
//! response per connection (`Connection: close`), bodies sized by `Content-Length` and capped.
//! Header parsing is `httparse`'s; everything a caller sends is bounded before it is buffered.

use std::io::{Read, Write};

/// Largest request or response head (request line + headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest body either side accepts.
pub const MAX_BODY: usize = 1024 * 1024;
const MAX_HEADERS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connection I/O failed")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP message: {0}")]
    Malformed(String),
    #[error("HTTP head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("HTTP body of {0} bytes is larger than {MAX_BODY}")]
    BodyTooLarge(usize),
    #[error("connection closed before the message was complete")]
    Truncated,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// A response to send or one that was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Response { status, body }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Reads until the end of the head; returns (head bytes incl. CRLFCRLF, extra body bytes).
fn read_head(stream: &mut impl Read) -> Result<(Vec<u8>, Vec<u8>), HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(pos + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(HttpError::Truncated);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(headers: &[httparse::Header<'_>]) -> Result<usize, HttpError> {
    let mut len = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| HttpError::Malformed("bad Content-Length".into()))?;
            len = v;
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Malformed(
                "chunked transfer encoding is not supported; send Content-Length".into(),
            ));
        }
    }
    if len > MAX_BODY {
        return Err(HttpError::BodyTooLarge(len));
    }
    Ok(len)
}

fn read_body(stream: &mut impl Read, mut body: Vec<u8>, len: usize) -> Result<Vec<u8>, HttpError> {
    if body.len() > len {
        body.truncate(len);
    }
    let mut chunk = [0u8; 8192];
    while body.len() < len {
        let want = (len - body.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..want])?;
        if n == 0 {
            return Err(HttpError::Truncated);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(body)
}

/// Reads one request from `stream`.
pub fn read_request(stream: &mut impl Read) -> Result<Request, HttpError> {
    let (head, rest) = read_head(stream)?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HttpError::Truncated),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    }
    let method = req.method.unwrap_or_default().to_string();
    let path = req.path.unwrap_or_default().to_string();
    let len = content_length(req.headers)?;
    let body = read_body(stream, rest, len)?;
    Ok(Request { method, path, body })
}

/// Writes `response` (JSON body) to `stream`.
pub fn write_response(stream: &mut impl Write, response: &Response) -> Result<(), HttpError> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    )
    .into_bytes();
    out.extend_from_slice(&response.body);
    stream.write_all(&out)?;
    stream.flush()?;
    Ok(())
}

/// Writes a request with an optional JSON body.
pub fn write_request(
    stream: &mut impl Write,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(), HttpError> {
    let mut out = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    stream.flush()?;
    Ok(())
}

/// Reads one response from `stream`.
pub fn read_response(stream: &mut impl Read) -> Result<Response, HttpError> {
    let (head, rest) = read_head(stream)?;
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HttpError::Truncated),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    }
    let status = resp.code.unwrap_or(0);
    let len = content_length(resp.headers)?;
    let body = read_body(stream, rest, len)?;
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip() {
        let mut wire = Vec::new();
        write_request(&mut wire, "PUT", "/vm/pause", b"{}").unwrap();
        let req = read_request(&mut wire.as_slice()).unwrap();
        assert_eq!(req.method, "PUT");
        assert_eq!(req.path, "/vm/pause");
        assert_eq!(req.body, b"{}");
    }

    #[test]
    fn response_roundtrip() {
        let mut wire = Vec::new();
        write_response(
            &mut wire,
            &Response::json(409, b"{\"error\":\"x\"}".to_vec()),
        )
        .unwrap();
        let r = read_response(&mut wire.as_slice()).unwrap();
        assert_eq!(r.status, 409);
        assert_eq!(r.body, b"{\"error\":\"x\"}");
    }

    #[test]
    fn hostile_requests_are_rejected_not_panicking() {
        let cases: Vec<Vec<u8>> = vec![
            b"GARBAGE\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            b"GET / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc".to_vec(),
            vec![b'A'; MAX_HEAD + 10],
            Vec::new(),
        ];
        for c in cases {
            assert!(read_request(&mut c.as_slice()).is_err());
        }
    }

    #[test]
    fn body_longer_than_content_length_is_cut() {
        let wire = b"POST /x HTTP/1.1\r\nContent-Length: 2\r\n\r\nabcdef";
        assert_eq!(read_request(&mut wire.as_slice()).unwrap().body, b"ab");
    }
}
