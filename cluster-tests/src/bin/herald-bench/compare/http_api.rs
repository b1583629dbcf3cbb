//! Centrifugo's server API over HTTP/1.1 keep-alive: `POST /api/publish`
//! with `X-API-Key`, one request at a time per connection. Just enough
//! HTTP for small JSON answers with a `Content-Length`.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive connection to the API.
#[derive(Debug)]
pub(crate) struct HttpApi {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
    key: String,
}

impl HttpApi {
    pub(crate) async fn connect(addr: SocketAddr, key: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
            addr,
            key: key.to_string(),
        })
    }

    /// `POST /api/publish`; an `error` in the answer is the failure.
    pub(crate) async fn publish(&mut self, channel: &str, data: &[u8]) -> Result<(), String> {
        let mut body = format!("{{\"channel\":\"{channel}\",\"data\":").into_bytes();
        body.extend_from_slice(data);
        body.push(b'}');
        let answer = self.post("/api/publish", &body).await?;
        if answer.windows(8).any(|w| w == b"\"error\":") {
            let text = String::from_utf8_lossy(&answer);
            return Err(format!(
                "api error {}",
                text.chars().take(80).collect::<String>()
            ));
        }
        Ok(())
    }

    async fn post(&mut self, path: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            self.key,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let io = |e: std::io::Error| format!("http: {}", e.kind());
        self.stream
            .get_mut()
            .write_all(&request)
            .await
            .map_err(io)?;
        let mut status = String::new();
        self.stream.read_line(&mut status).await.map_err(io)?;
        let code = status.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await.map_err(io)? == 0 {
                return Err("http: eof".to_string());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut answer = vec![0u8; length];
        self.stream.read_exact(&mut answer).await.map_err(io)?;
        if code != "200" {
            return Err(format!("http {code}"));
        }
        Ok(answer)
    }
}
