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

use protocol::{ClientFrame, ServerFrame};
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

/// A running `wrangler dev`; killed when dropped.
pub struct Edge {
    child: Option<Child>,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Storage folder (`--persist-to`).
    pub storage: PathBuf,
    log: PathBuf,
}

impl Edge {
    /// Starts the edge on a free port with `storage` as its persistence folder.
    pub fn start(storage: &Path) -> Edge {
        let mut edge = Edge {
            child: None,
            port: free_port(),
            storage: storage.to_path_buf(),
            log: storage.with_extension("log"),
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
            .args(["--live-reload=false", "--show-interactive-dev-session=false"])
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
                    panic!("wrangler dev exited early ({status}); log: {}", self.log.display());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("wrangler dev not ready after 90 s; log: {}", self.log.display());
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

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A plain HTTP/1.1 GET; returns status and body.
    pub fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// Opens a WebSocket to a conversation as `user` on `device`.
    pub fn connect(&self, conversation: &str, user: &str, device: &str) -> Ws {
        let url = format!(
            "ws://127.0.0.1:{}/v1/conversations/{conversation}/connect?user={user}&device={device}",
            self.port
        );
        let (socket, _) = tungstenite::connect(url).expect("WebSocket connect");
        if let MaybeTlsStream::Plain(tcp) = socket.get_ref() {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
        }
        Ws { socket }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A protocol client over a real WebSocket, for tests.
pub struct Ws {
    socket: tungstenite::WebSocket<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Sends a frame.
    pub fn send(&mut self, frame: &ClientFrame) {
        self.send_text(&frame.encode());
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

    /// Next server frame; panics on timeout, close or an undecodable frame.
    pub fn recv(&mut self) -> ServerFrame {
        loop {
            match self.socket.read().expect("WebSocket read") {
                Message::Text(text) => {
                    return ServerFrame::decode(text.as_bytes())
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
