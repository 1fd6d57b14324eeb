//! Harness for integration tests against the real edge: starts `wrangler dev`
//! (local workerd) on a free port with its own storage folder, can SIGKILL and
//! restart it on the same storage, and speaks the wire protocol over a real
//! WebSocket.
//!
//! Requires `scripts/setup.sh` and `scripts/build.sh` to have run; every missing
//! piece is a loud panic naming the command to run, never a skipped test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocol::{ClientFrame, ServerFrame, Ticket};
use serde::Serialize;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// A fresh, empty folder under `target/` for one test's edge storage.
pub fn fresh_storage(name: &str) -> PathBuf {
    let dir = repo_root()
        .join("target/edge-storage")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create storage folder");
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free port")
}

/// The JWT secret every test edge is started with.
pub const TEST_SECRET: &str = "ackline-test-secret-not-for-production";

/// Claims of an Ackline token (see docs/PROTOCOL.md).
#[derive(Serialize)]
pub struct Claims<'a> {
    /// User id.
    pub sub: &'a str,
    /// Device id.
    pub device: &'a str,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Conversations the user may join.
    pub conversations: Vec<&'a str>,
}

/// Now in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mints an HS256 token with the `jsonwebtoken` crate.
pub fn mint(claims: &Claims<'_>, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("mint a JWT")
}

/// A valid token for `user` on `device`, allowed into `conversation`.
pub fn token_for(conversation: &str, user: &str, device: &str) -> String {
    mint(
        &Claims {
            sub: user,
            device,
            exp: unix_now() + 3600,
            conversations: vec![conversation],
        },
        TEST_SECRET,
    )
}

/// A running `wrangler dev`; killed when dropped.
pub struct Edge {
    child: Option<Child>,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Storage folder (`--persist-to`).
    pub storage: PathBuf,
    log: PathBuf,
    vars: Vec<(String, String)>,
}

impl Edge {
    /// Starts the edge on a free port with `storage` as its persistence folder.
    pub fn start(storage: &Path) -> Edge {
        Edge::start_with_vars(storage, &[])
    }

    /// Like [`Edge::start`], with extra Worker variables (`--var NAME:VALUE`).
    pub fn start_with_vars(storage: &Path, vars: &[(&str, &str)]) -> Edge {
        let mut edge = Edge {
            child: None,
            port: free_port(),
            storage: storage.to_path_buf(),
            log: storage.with_extension("log"),
            vars: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        edge.spawn();
        edge
    }

    fn spawn(&mut self) {
        let root = repo_root();
        let wrangler = root.join("node_modules/.bin/wrangler");
        assert!(
            wrangler.exists(),
            "{} is missing: run scripts/setup.sh",
            wrangler.display()
        );
        assert!(
            root.join("edge-worker/build/index.js").exists(),
            "the edge worker is not built: run scripts/build.sh"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open edge log");
        let child = Command::new(wrangler)
            .current_dir(&root)
            .args(["dev", "--local", "--ip", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--persist-to")
            .arg(&self.storage)
            .args([
                "--live-reload=false",
                "--show-interactive-dev-session=false",
            ])
            .arg("--var")
            .arg(format!("ACKLINE_JWT_SECRET:{TEST_SECRET}"))
            .args(["--var", "ACKLINE_DEV_TOKENS:1"])
            .args(
                self.vars
                    .iter()
                    .flat_map(|(k, v)| ["--var".to_owned(), format!("{k}:{v}")]),
            )
            // The inspector port defaults to a fixed number: two edges would clash.
            .arg("--inspector-port")
            .arg(free_port().to_string())
            .env("WRANGLER_SEND_METRICS", "false")
            .env("CLOUDFLARE_CF_FETCH_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            // Own process group, so a kill reaches workerd too.
            .process_group(0)
            .spawn()
            .expect("spawn wrangler dev");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok((200, _)) = self.http_get("/healthz") {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "wrangler dev exited early ({status}); log: {}",
                        self.log.display()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "wrangler dev not ready after 90 s; log: {}",
            self.log.display()
        );
    }

    /// SIGKILLs wrangler and workerd at once, with no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }

    /// Kills the edge and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Resident memory of the edge's workerd processes, in KiB (read from
    /// /proc: the processes of wrangler's process group named `workerd`).
    pub fn workerd_rss_kib(&self) -> u64 {
        let Some(group) = self.child.as_ref().map(Child::id) else {
            return 0;
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let mut total = 0;
        for entry in entries.flatten() {
            let dir = entry.path();
            let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after ')'.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let pgrp = rest
                .split_whitespace()
                .nth(2)
                .and_then(|p| p.parse::<u32>().ok());
            if pgrp != Some(group) || !head.contains("workerd") {
                continue;
            }
            let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
        total
    }

    /// CPU time (user + system) the edge's workerd processes have used so
    /// far, in seconds (from /proc/<pid>/stat of the processes of wrangler's
    /// process group named `workerd`): what an operator pays for.
    pub fn workerd_cpu_seconds(&self) -> f64 {
        let Some(group) = self.child.as_ref().map(Child::id) else {
            return 0.0;
        };
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0.0;
        };
        let mut ticks = 0u64;
        for entry in entries.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            // After the comm: state ppid pgrp ... utime (14th field) stime (15th).
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let pgrp = fields.get(2).and_then(|p| p.parse::<u32>().ok());
            if pgrp != Some(group) || !head.contains("workerd") {
                continue;
            }
            let field = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            ticks += field(11) + field(12);
        }
        ticks as f64 / clock_ticks_per_second() as f64
    }

    /// The edge's log so far (wrangler's and workerd's output).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A plain HTTP/1.1 GET; returns status and body.
    pub fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        self.http("GET", path, &[], "")
    }

    /// A plain HTTP/1.1 request; returns status and body.
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.write_all(request.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        Ok((
            status,
            if chunked {
                dechunk(body)
            } else {
                body.to_owned()
            },
        ))
    }

    /// Asks the dev token endpoint for a token of `user` on `device` for
    /// `conversations`; the HTTP status and body.
    pub fn dev_token(&self, user: &str, device: &str, conversations: &[&str]) -> (u16, String) {
        let body =
            serde_json::json!({ "user": user, "device": device, "conversations": conversations });
        self.http(
            "POST",
            "/v1/dev/token",
            &[("Content-Type", "application/json")],
            &body.to_string(),
        )
        .expect("HTTP")
    }

    /// Opens a WebSocket to a conversation as `user` on `device`, with a valid token.
    pub fn connect(&self, conversation: &str, user: &str, device: &str) -> Ws {
        self.connect_with_token(conversation, &token_for(conversation, user, device))
            .unwrap_or_else(|(status, body)| panic!("WebSocket refused: {status} {body}"))
    }

    /// Opens a WebSocket with `token` (passed as `access_token`); on an HTTP
    /// refusal returns the status and body. A token the edge refuses is not an
    /// HTTP refusal: the upgrade succeeds and the socket is closed at once
    /// (see [`Edge::connect_refused`]).
    pub fn connect_with_token(&self, conversation: &str, token: &str) -> Result<Ws, (u16, String)> {
        let url = format!(
            "ws://127.0.0.1:{}/v1/conversations/{conversation}/connect?access_token={token}",
            self.port
        );
        match tungstenite::connect(url) {
            Ok((socket, _)) => {
                if let MaybeTlsStream::Plain(tcp) = socket.get_ref() {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                }
                Ok(Ws {
                    socket,
                    read_ticket: None,
                    echo_tickets: true,
                    bytes_received: 0,
                })
            }
            Err(tungstenite::Error::Http(response)) => {
                // tungstenite keeps only the body bytes that arrived with the
                // head; ask again with a plain upgrade request to read it all.
                let (_, body) = self
                    .http(
                        "GET",
                        &format!("/v1/conversations/{conversation}/connect?access_token={token}"),
                        &[
                            ("Upgrade", "websocket"),
                            ("Sec-WebSocket-Version", "13"),
                            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                        ],
                        "",
                    )
                    .unwrap_or_default();
                Err((response.status().as_u16(), body))
            }
            Err(e) => panic!("WebSocket connect failed: {e}"),
        }
    }
}

impl Edge {
    /// Opens a WebSocket with `token` that the edge refuses the way a browser
    /// can see: the upgrade succeeds and the first thing read is a Close
    /// frame. Its code and reason (panics on anything else).
    pub fn connect_refused(&self, conversation: &str, token: &str) -> (u16, String) {
        match self.connect_with_token(conversation, token) {
            Ok(mut ws) => ws.first_read_close(),
            Err((status, body)) => panic!("upgrade refused with HTTP {status} {body}, not a close"),
        }
    }

    /// Whether the edge keeps a socket opened with `token`: it answers a ping
    /// (a refused one is closed before any frame).
    pub fn accepts_token(&self, conversation: &str, token: &str) -> Result<(), String> {
        match self.connect_with_token(conversation, token) {
            Ok(mut ws) => {
                if ws.send_ping_probe() {
                    Ok(())
                } else {
                    Err("the socket closed before it answered a ping".to_owned())
                }
            }
            Err((status, body)) => Err(format!("HTTP {status} {body}")),
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Decodes an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A protocol client over a real WebSocket, for tests. Like a real client it
/// echoes the read ticket of the newest `welcome`/`batch` it decoded as `rx`
/// on every frame it sends (see [`Ws::echo_tickets`] to stop).
pub struct Ws {
    socket: tungstenite::WebSocket<MaybeTlsStream<TcpStream>>,
    read_ticket: Option<Ticket>,
    echo_tickets: bool,
    bytes_received: u64,
}

impl Ws {
    /// Sends a frame (with `rx` unless echoing is off).
    pub fn send(&mut self, frame: &ClientFrame) {
        let rx = self.read_ticket.filter(|_| self.echo_tickets);
        self.send_text(&frame.encode_rx(rx));
    }

    /// Whether [`Ws::send`] echoes read tickets (on by default). Off: the
    /// server sees a client that never proves it read its answers.
    pub fn echo_tickets(&mut self, on: bool) {
        self.echo_tickets = on;
    }

    /// Bytes of text frames decoded so far.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Decodes a server frame and notes its read ticket.
    fn decode(&mut self, text: &str) -> Result<ServerFrame, protocol::DecodeError> {
        self.bytes_received += text.len() as u64;
        let frame = ServerFrame::decode(text.as_bytes())?;
        if let Some(ticket) = frame.ticket() {
            self.read_ticket = Some(ticket);
        }
        Ok(frame)
    }

    /// Sends raw text (for bad-input tests).
    pub fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .expect("WebSocket send");
    }

    /// Sends raw bytes as a binary message.
    pub fn send_binary(&mut self, bytes: Vec<u8>) {
        self.socket
            .send(Message::Binary(bytes.into()))
            .expect("WebSocket send");
    }

    /// Sends `payload` as a text message without checking that it is UTF-8
    /// (for invalid-input tests).
    pub fn send_raw_text_frame(&mut self, payload: Vec<u8>) {
        use tungstenite::protocol::frame::coding::{Data, OpCode};
        use tungstenite::protocol::frame::Frame;
        self.socket
            .send(Message::Frame(Frame::message(
                payload,
                OpCode::Data(Data::Text),
                true,
            )))
            .expect("WebSocket send");
    }

    /// Sets how long a read waits.
    pub fn set_read_timeout(&mut self, timeout: Duration) {
        if let MaybeTlsStream::Plain(tcp) = self.socket.get_ref() {
            let _ = tcp.set_read_timeout(Some(timeout));
        }
    }

    /// The next frame if one arrives within the read timeout; panics on close.
    pub fn try_recv(&mut self) -> Option<ServerFrame> {
        match self.socket.read() {
            Ok(Message::Text(text)) => Some(
                self.decode(&text)
                    .unwrap_or_else(|e| panic!("bad server frame {text}: {e}")),
            ),
            Ok(Message::Close(frame)) => panic!("server closed the socket: {frame:?}"),
            Ok(_) => None,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("WebSocket read: {e}"),
        }
    }

    /// Reads until the socket closes, handing every frame before it to
    /// `on_frame`; returns the close code (panics on a read timeout).
    pub fn expect_close(&mut self, mut on_frame: impl FnMut(ServerFrame)) -> u16 {
        self.set_read_timeout(Duration::from_secs(30));
        loop {
            match self.socket.read() {
                Ok(Message::Close(frame)) => return frame.map_or(1005, |f| u16::from(f.code)),
                Ok(Message::Text(text)) => {
                    if let Ok(frame) = self.decode(&text) {
                        on_frame(frame);
                    }
                }
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return 1006
                }
                Err(tungstenite::Error::Protocol(_)) => return 1006,
                Err(e) => panic!("expected a close, got {e}"),
            }
        }
    }

    /// The first message, which must be a Close frame within 10 s: its code
    /// and reason (1005 and "" for a Close without a code).
    pub fn first_read_close(&mut self) -> (u16, String) {
        self.set_read_timeout(Duration::from_secs(10));
        match self.socket.read() {
            Ok(Message::Close(frame)) => frame.map_or((1005, String::new()), |f| {
                (u16::from(f.code), f.reason.into_owned())
            }),
            Ok(other) => panic!("expected a Close frame first, got {other:?}"),
            Err(e) => panic!("expected a Close frame first, got {e}"),
        }
    }

    /// Reads (and drops) frames until none arrives for `quiet`; the close code
    /// if the socket closed meanwhile.
    pub fn drain(&mut self, quiet: Duration) -> Option<u16> {
        self.set_read_timeout(quiet);
        loop {
            match self.socket.read() {
                Ok(Message::Close(frame)) => {
                    return Some(frame.map_or(1005, |f| u16::from(f.code)))
                }
                Ok(Message::Text(text)) => {
                    let _ = self.decode(&text);
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(_) => return Some(1006),
            }
        }
    }

    /// True if a ping is answered with its pong (other frames are skipped).
    pub fn send_ping_probe(&mut self) -> bool {
        const NONCE: u64 = 0x0a11_ce;
        if self
            .socket
            .send(Message::Text(
                ClientFrame::Ping { nonce: NONCE }.encode().into(),
            ))
            .is_err()
        {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.socket.read() {
                Ok(Message::Text(text)) => {
                    if let Ok(ServerFrame::Pong { nonce: NONCE }) =
                        ServerFrame::decode(text.as_bytes())
                    {
                        return true;
                    }
                }
                Ok(Message::Close(_)) => return false,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Next server frame; panics on timeout, close or an undecodable frame.
    pub fn recv(&mut self) -> ServerFrame {
        loop {
            match self.socket.read().expect("WebSocket read") {
                Message::Text(text) => {
                    return self
                        .decode(&text)
                        .unwrap_or_else(|e| panic!("bad server frame {text}: {e}"))
                }
                Message::Close(frame) => panic!("server closed the socket: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Reads frames until `pick` returns `Some`, discarding the others.
    pub fn recv_until<T>(&mut self, mut pick: impl FnMut(&ServerFrame) -> Option<T>) -> T {
        loop {
            let frame = self.recv();
            if let Some(found) = pick(&frame) {
                return found;
            }
        }
    }
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(100)
}
