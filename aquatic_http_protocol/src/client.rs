//! The client side, for tests and load generators: reading a tracker's HTTP
//! response. (Requests are written by
//! [`Request::write_http_get`](crate::Request::write_http_get).)

/// One HTTP response read from a tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpResponse<'a> {
    /// The status code.
    pub status: u16,
    /// The body, `Content-Length` bytes long; decode it with
    /// [`bencode::decode`](crate::bencode::decode).
    pub body: &'a [u8],
    /// Bytes of the buffer this response took, head and body.
    pub consumed: usize,
    /// Whether the server said `Connection: close`.
    pub connection_close: bool,
}

/// Why bytes are not a response this crate's server could have sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseParseError {
    /// Not an HTTP/1.x response head.
    #[error("malformed HTTP response")]
    Malformed,
    /// No `Content-Length`, or one that is not a number.
    #[error("missing or invalid content-length")]
    ContentLength,
}

/// Parses the first response in `buf`: `Ok(None)` until head and body are
/// both complete.
pub fn parse_http_response(buf: &[u8]) -> Result<Option<HttpResponse<'_>>, ResponseParseError> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ResponseParseError::Malformed),
    };
    let mut content_length = None;
    let mut connection_close = false;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let text =
                std::str::from_utf8(header.value).map_err(|_| ResponseParseError::ContentLength)?;
            content_length = Some(
                text.trim()
                    .parse::<usize>()
                    .map_err(|_| ResponseParseError::ContentLength)?,
            );
        } else if header.name.eq_ignore_ascii_case("connection") {
            connection_close |= header
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let content_length = content_length.ok_or(ResponseParseError::ContentLength)?;
    let Some(end) = head_len.checked_add(content_length) else {
        return Err(ResponseParseError::ContentLength);
    };
    let Some(body) = buf.get(head_len..end) else {
        return Ok(None);
    };
    Ok(Some(HttpResponse {
        status: response.code.unwrap_or_default(),
        body,
        consumed: end,
        connection_close,
    }))
}
