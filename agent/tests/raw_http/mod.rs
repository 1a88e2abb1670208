//! Raw HTTP/1 on loopback for the proxy tests: an upstream that echoes
//! each request head, and a client that writes exactly the bytes a test
//! gives (a library client would fix up the headers under test).

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// An upstream that answers each request (on kept-alive connections) with
/// the request head it received as the body, and with hop-by-hop headers of
/// its own that the proxy must not pass on.
pub struct EchoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    _tasks: JoinSet<()>,
}

impl EchoUpstream {
    /// Starts it on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(echo(stream));
            }
        });
        Self {
            addr,
            _tasks: tasks,
        }
    }
}

async fn echo(mut stream: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
             connection: x-upstream-hop\r\nx-upstream-hop: 1\r\nkeep-alive: timeout=99\r\n\
             proxy-authenticate: Basic\r\nupgrade: h2c\r\n\r\n{head}",
            head.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Reads one head (through the blank line) from `stream`, keeping what
/// follows in `buf`; `None` once the peer has closed.
pub async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// One answer as the client saw it.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// Header names lower-cased, with their values.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The first value of `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` on `stream` and reads the answer (bodies with a length).
pub async fn exchange(stream: &mut TcpStream, request: &str) -> Answer {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let head = read_head(stream, &mut buf).await.expect("an answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("a content-length");
    while buf.len() < length {
        if stream.read_buf(&mut buf).await.unwrap() == 0 {
            break;
        }
    }
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&buf).into_owned(),
    }
}

/// A GET of `/` on a new connection to `addr`.
pub async fn get(addr: SocketAddr) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    exchange(&mut stream, "GET / HTTP/1.1\r\nhost: shop.example\r\n\r\n").await
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
