//! A TCP proxy on 127.0.0.1 in front of a server: it counts the HTTP requests whose
//! request line starts with a given prefix, and on demand injects the network faults
//! a store client meets in the wild (connection resets, 500/503 answers, stalls).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways.
    None,
    /// Accept, then close at once with a TCP reset.
    Reset,
    /// Read the request head and answer 500 or 503 (alternating), then close.
    ServerError,
    /// Accept and read, never answer, hold the connection open.
    Stall,
}

struct Shared {
    fault: Mutex<Fault>,
    /// Forwarding connections (client side), shut down when a fault begins so that
    /// pooled keep-alive connections meet the fault too.
    forwarding: Mutex<Vec<TcpStream>>,
    /// Connections held open by `Fault::Stall`.
    stalled: Mutex<Vec<TcpStream>>,
    count: AtomicUsize,
    errors_answered: AtomicUsize,
    upstream: u16,
    prefix: Vec<u8>,
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Forwards to `upstream` on 127.0.0.1, counting requests that start with
    /// `request_prefix` (such as `GET /bucket/key`).
    pub fn start(upstream: u16, request_prefix: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            forwarding: Mutex::new(Vec::new()),
            stalled: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            errors_answered: AtomicUsize::new(0),
            upstream,
            prefix: request_prefix.as_bytes().to_vec(),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let fault = *accepting.fault.lock();
                let shared = accepting.clone();
                std::thread::spawn(move || shared.serve(client, fault));
            }
        });
        FaultProxy { port, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests forwarded whose line starts with the prefix.
    pub fn count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// 500/503 answers given so far.
    pub fn errors_answered(&self) -> usize {
        self.shared.errors_answered.load(Ordering::SeqCst)
    }

    /// Switches the fault for new connections and cuts the open ones, so that
    /// nothing keeps talking to the server past the switch.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock() = fault;
        if fault != Fault::None {
            for conn in self.shared.forwarding.lock().drain(..) {
                let _ = conn.shutdown(Shutdown::Both);
            }
        }
        if fault != Fault::Stall {
            for conn in self.shared.stalled.lock().drain(..) {
                let _ = conn.shutdown(Shutdown::Both);
            }
        }
    }
}

impl Shared {
    fn serve(self: Arc<Self>, client: TcpStream, fault: Fault) {
        match fault {
            Fault::None => self.forward(client),
            Fault::Reset => reset(client),
            Fault::ServerError => {
                let mut client = client;
                let _ = read_head(&mut client);
                let n = self.errors_answered.fetch_add(1, Ordering::SeqCst);
                let status = if n.is_multiple_of(2) {
                    "500 Internal Server Error"
                } else {
                    "503 Slow Down"
                };
                let _ = write!(
                    client,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = client.shutdown(Shutdown::Both);
            }
            Fault::Stall => {
                let mut held = client.try_clone().unwrap();
                self.stalled.lock().push(client);
                // Keep reading so the client's writes never block on a full window;
                // the connection ends when the stall does.
                let mut sink = [0u8; 1 << 16];
                while held.read(&mut sink).is_ok_and(|n| n > 0) {}
            }
        }
    }

    fn forward(self: Arc<Self>, client: TcpStream) {
        let Ok(server) = TcpStream::connect(("127.0.0.1", self.upstream)) else {
            return reset(client);
        };
        self.forwarding.lock().push(client.try_clone().unwrap());
        let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let (mut s_read, mut c_write) = (server, client);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut s_read, &mut c_write);
            let _ = c_write.shutdown(Shutdown::Both);
        });
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = c_read.read(&mut buf) {
            if n == 0 {
                break;
            }
            let hits = buf[..n]
                .windows(self.prefix.len())
                .filter(|w| *w == self.prefix.as_slice())
                .count();
            self.count.fetch_add(hits, Ordering::SeqCst);
            if s_write.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = s_write.shutdown(Shutdown::Both);
    }
}

/// Closes with RST instead of FIN: SO_LINGER with a zero timeout.
fn reset(conn: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is open (owned by `conn`) and the option value is a
    // live `linger` of the size passed.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(conn);
}

/// Reads up to the end of an HTTP request head (or what arrives within a second).
fn read_head(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(())
}
