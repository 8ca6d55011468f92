//! problem+json for the errors hyper answers by itself, below the router.
//!
//! When hyper cannot parse a request head it writes an automatic answer without calling the
//! service: `400` (malformed request line or header), `414` (request target over hyper's fixed
//! 65,534-byte limit) or `431` (head larger than the read buffer, or more headers than
//! allowed), with `content-length: 0` and no body, then closes the connection. [`EdgeIo`] wraps
//! each accepted connection and replaces exactly those answers — a response head with one of
//! these statuses, `content-length: 0` and no `content-type`, which the application itself never
//! sends (its 400s carry problem+json) — by the same status with a problem+json body and a
//! stable `code`: `malformed_request`, `uri_too_long`, `headers_too_large`, and a fresh
//! `request_id` (also in `x-request-id`, and logged). hyper closes the connection after such an
//! answer; the replacement says `connection: close`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose automatic parse-error answers become problem+json.
pub struct EdgeIo<T> {
    inner: T,
    /// Replacement bytes not yet written to `inner`.
    pending: Vec<u8>,
    sent: usize,
}

impl<T> EdgeIo<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

/// The (status line, code, title, detail) of an automatic answer.
fn replacement_for(head: &[u8]) -> Option<Vec<u8>> {
    let (status, reason, code, title, detail) = if head.starts_with(b"HTTP/1.1 400 ") {
        (
            400,
            "Bad Request",
            "malformed_request",
            "Malformed request",
            "The request line or a header could not be parsed as HTTP/1.1.",
        )
    } else if head.starts_with(b"HTTP/1.1 414 ") {
        (
            414,
            "URI Too Long",
            "uri_too_long",
            "URI too long",
            "The request target exceeds 65,534 bytes.",
        )
    } else if head.starts_with(b"HTTP/1.1 431 ") {
        (
            431,
            "Request Header Fields Too Large",
            "headers_too_large",
            "Request header fields too large",
            "The request head exceeds the server's limit (size or number of header fields).",
        )
    } else {
        return None;
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    // Exactly one head, nothing after it, no body, no content type: hyper's own answer.
    if end + 4 != head.len() {
        return None;
    }
    let lower = head[..end].to_ascii_lowercase();
    let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    if !has(b"\r\ncontent-length: 0") || has(b"\r\ncontent-type:") {
        return None;
    }
    // Like every other answer, it carries a request id (in the body and `x-request-id`),
    // logged here: the request never reached the router, so this line is its only trace.
    let request_id = uuid::Uuid::now_v7().to_string();
    tracing::info!(request_id = %request_id, code, status, "request refused below the router");
    let body = serde_json::json!({
        "type": format!("urn:sessiongate:problem:{code}"),
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    })
    .to_string();
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

impl<T: AsyncWrite + Unpin> EdgeIo<T> {
    /// Writes what is pending; ready once nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for EdgeIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for EdgeIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(r) = replacement_for(buf) {
            self.pending = r;
            // The original is consumed; the replacement goes out now or on the next
            // write/flush/shutdown (hyper flushes after an answer).
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        // hyper writes an automatic answer's head as one buffer (no body follows it).
        let mut non_empty = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (non_empty.next(), non_empty.next())
            && let Some(r) = replacement_for(only)
        {
            self.pending = r;
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(only.len()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// (code, status) of every answer [`EdgeIo`] produces, read back from real replacements (for
/// the code table test in `api::problem`).
#[cfg(test)]
pub(crate) fn every_edge_answer() -> Vec<(String, u16)> {
    [
        "400 Bad Request",
        "414 URI Too Long",
        "431 Request Header Fields Too Large",
    ]
    .iter()
    .map(|line| {
        let bare = format!("HTTP/1.1 {line}\r\ncontent-length: 0\r\n\r\n");
        let r = replacement_for(bare.as_bytes()).expect("replaced");
        let text = String::from_utf8(r).expect("utf-8");
        let body = text.split("\r\n\r\n").nth(1).expect("body");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        (
            v["code"].as_str().expect("code").to_string(),
            u16::try_from(v["status"].as_u64().expect("status")).expect("u16"),
        )
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::replacement_for;

    #[test]
    fn only_hypers_bare_answers_are_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 14:00:00 GMT\r\n\r\n";
        let r = String::from_utf8(replacement_for(bare).expect("replaced")).expect("utf-8");
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        assert!(r.contains("content-type: application/problem+json"), "{r}");
        assert!(r.contains(r#""code":"headers_too_large""#), "{r}");
        let (head, body) = r.split_once("\r\n\r\n").expect("head and body");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        let rid = v["request_id"].as_str().expect("a request id");
        assert!(
            head.contains(&format!("\r\nx-request-id: {rid}\r\n")),
            "{head}"
        );
        // The application's own answers are left alone: a body, a content type, a 200.
        let app = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement_for(app).is_none());
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        assert!(replacement_for(with_body).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement_for(ok).is_none());
        let partial = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n";
        assert!(replacement_for(partial).is_none());
    }
}
