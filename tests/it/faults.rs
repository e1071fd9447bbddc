//! A faulty object store for the tests: a small HTTP proxy on 127.0.0.1 in front
//! of the S3 test server, which answers some requests as a real store misbehaves.
//!
//! - `Delay`: the request reaches the server late (a slow store).
//! - `SlowDown` / `InternalError`: answered 503 / 500 with S3's error body,
//!   without reaching the server (throttling, a failing front end).
//! - `Reset`: a request with a body is cut after half its body and the
//!   connection closed with bytes unread (Linux sends a reset); any other request
//!   reaches the server and its answer is cut after half its body.
//! - `LostAnswer`: the request reaches the server and succeeds there, but its
//!   answer never arrives: the connection closes instead (a PUT whose 200 was
//!   lost is the case that matters: the write happened, the writer cannot know).
//!
//! Faults come from a script (the n-th request matching a method and a path
//! fragment gets a fault) or at random (each request, with a seeded generator).
//! The proxy serves one request per connection (it answers `Connection: close`),
//! each on its own thread, and stops when dropped or after its lifetime.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Delay,
    SlowDown,
    InternalError,
    Reset,
    LostAnswer,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Delay,
        Fault::SlowDown,
        Fault::InternalError,
        Fault::Reset,
        Fault::LostAnswer,
    ];
}

/// The n-th request (from 0) with this method whose path holds `path` gets `fault`.
#[derive(Clone, Debug)]
pub struct Scripted {
    pub method: &'static str,
    pub path: String,
    pub nth: usize,
    pub fault: Fault,
}

/// Random faults: each request gets one with probability `rate`, its kind
/// chosen evenly among `kinds`.
#[derive(Clone, Debug)]
pub struct Random {
    pub seed: u64,
    pub rate: f64,
    pub kinds: Vec<Fault>,
}

#[derive(Default)]
struct State {
    script: Vec<(Scripted, usize)>,
    random: Option<(Random, rand_chacha::ChaCha8Rng)>,
    requests: usize,
    injected: BTreeMap<Fault, usize>,
    /// What each injected fault hit: `METHOD path`.
    log: Vec<(Fault, String)>,
    /// Every request: `METHOD path`.
    seen: Vec<String>,
}

impl State {
    fn fault_for(&mut self, method: &str, path: &str) -> Option<Fault> {
        self.requests += 1;
        self.seen.push(format!("{method} {path}"));
        let mut chosen = None;
        for (rule, seen) in &mut self.script {
            if rule.method == method && path.contains(&rule.path) {
                if *seen == rule.nth && chosen.is_none() {
                    chosen = Some(rule.fault);
                }
                *seen += 1;
            }
        }
        if chosen.is_none() {
            if let Some((random, rng)) = &mut self.random {
                if rng.random_bool(random.rate) && !random.kinds.is_empty() {
                    chosen = Some(random.kinds[rng.random_range(0..random.kinds.len())]);
                }
            }
        }
        if let Some(f) = chosen {
            *self.injected.entry(f).or_default() += 1;
            self.log.push((f, format!("{method} {path}")));
        }
        chosen
    }
}

/// The proxy: point the S3 endpoint at `endpoint`.
pub struct FaultyStore {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Drop for FaultyStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread so it sees the stop.
        let _ = TcpStream::connect(self.endpoint.trim_start_matches("http://"));
    }
}

impl FaultyStore {
    /// A proxy to the server at `upstream` (`http://127.0.0.1:port`), without
    /// faults until told; it stops by itself after `lifetime`.
    pub fn start(upstream: &str, lifetime: Duration) -> FaultyStore {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("an upstream of 127.0.0.1:port");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let started = Instant::now();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::SeqCst) || started.elapsed() > lifetime {
                    break;
                }
                let Ok(client) = client else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(client, upstream, &s);
                });
            }
        });
        FaultyStore {
            endpoint,
            state,
            stop,
        }
    }

    /// `env` (an S3 server's environment) with its endpoint pointed here.
    pub fn in_front(&self, env: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        env.iter()
            .map(|(k, v)| match *k {
                "AWS_ENDPOINT_URL" => (*k, self.endpoint.clone()),
                _ => (*k, v.clone()),
            })
            .collect()
    }

    pub fn script(&self, rules: Vec<Scripted>) {
        self.state.lock().unwrap().script = rules.into_iter().map(|r| (r, 0)).collect();
    }

    pub fn random(&self, random: Option<Random>) {
        self.state.lock().unwrap().random =
            random.map(|r| (r.clone(), rand_chacha::ChaCha8Rng::seed_from_u64(r.seed)));
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<Fault, usize> {
        self.state.lock().unwrap().injected.clone()
    }

    /// Each injected fault and the request it hit.
    pub fn log(&self) -> Vec<(Fault, String)> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// Every request so far, `METHOD path`, in the order they came.
    pub fn seen(&self) -> Vec<String> {
        self.state.lock().unwrap().seen.clone()
    }
}

/// A request or answer head: the first line, the header lines, and the bytes
/// of the body already read with it.
struct Head {
    first: String,
    headers: Vec<(String, String)>,
    rest: Vec<u8>,
}

impl Head {
    fn read(from: &mut TcpStream) -> std::io::Result<Head> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = from.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let text = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let first = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(Head {
            first,
            headers,
            rest: buf[end + 4..].to_vec(),
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The head as sent on, with `Connection: close`.
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.first);
        for (k, v) in &self.headers {
            if !k.eq_ignore_ascii_case("connection") {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

fn serve(mut client: TcpStream, upstream: SocketAddr, state: &Mutex<State>) -> std::io::Result<()> {
    let mut request = Head::read(&mut client)?;
    assert!(
        request.header("transfer-encoding").is_none(),
        "a chunked request body: the proxy reads bodies by Content-Length"
    );
    let length: usize = request
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut parts = request.first.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    let fault = state.lock().unwrap().fault_for(&method, &path);
    match fault {
        Some(Fault::SlowDown) => {
            return answer(
                &mut client,
                503,
                "SlowDown",
                "Please reduce your request rate.",
            )
        }
        Some(Fault::InternalError) => {
            return answer(
                &mut client,
                500,
                "InternalError",
                "We encountered an internal error. Please try again.",
            )
        }
        Some(Fault::Reset) if length > 0 => {
            // Half the body, then a close with bytes unread.
            let mut half = vec![0u8; (length / 2).saturating_sub(request.rest.len())];
            client.read_exact(&mut half)?;
            return Ok(());
        }
        Some(Fault::Delay) => std::thread::sleep(Duration::from_millis(1000)),
        _ => {}
    }
    let mut body = std::mem::take(&mut request.rest);
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let mut server = TcpStream::connect(upstream)?;
    server.write_all(&request.bytes())?;
    server.write_all(&body)?;
    let mut reply = Head::read(&mut server)?;
    let mut reply_body = std::mem::take(&mut reply.rest);
    server.read_to_end(&mut reply_body)?;
    match fault {
        Some(Fault::LostAnswer) => Ok(()),
        Some(Fault::Reset) => {
            client.write_all(&reply.bytes())?;
            client.write_all(&reply_body[..reply_body.len() / 2])
        }
        _ => {
            client.write_all(&reply.bytes())?;
            client.write_all(&reply_body)
        }
    }
}

/// An S3 error answer.
fn answer(client: &mut TcpStream, status: u16, code: &str, message: &str) -> std::io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    let reason = if status == 503 {
        "Service Unavailable"
    } else {
        "Internal Server Error"
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes())?;
    client.write_all(body.as_bytes())
}
