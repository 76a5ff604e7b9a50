//! A slow origin: a TCP proxy on loopback in front of a real server (the registry) whose
//! answers leave at a fixed rate shared by all connections, like a registry behind a thin
//! uplink. Tests use it to keep a download running long enough to kill something mid-task,
//! without touching the machine's qdiscs (tests run in parallel). Stops on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Paces bytes to `rate` per second across every connection.
struct Pacer {
    rate: u64,
    next: Mutex<Instant>,
}

impl Pacer {
    /// Waits until `n` more bytes may leave.
    fn take(&self, n: usize) {
        let due = {
            let mut next = self.next.lock().expect("pacer lock");
            let now = Instant::now();
            if *next < now {
                *next = now;
            }
            let due = *next;
            *next += Duration::from_secs_f64(n as f64 / self.rate as f64);
            due
        };
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
    }
}

/// The running proxy.
pub struct Throttle {
    /// `127.0.0.1:PORT` to use instead of the upstream's address.
    pub addr: String,
    stop: Arc<AtomicBool>,
}

impl Throttle {
    /// Forwards connections on a new loopback port to `upstream` (`host:port`), sending the
    /// upstream's answers at `bytes_per_sec`.
    pub fn start(upstream: &str, bytes_per_sec: u64) -> Result<Throttle> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind the throttling proxy")?;
        let addr = listener.local_addr()?.to_string();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let pacer = Arc::new(Pacer {
            rate: bytes_per_sec.max(1),
            next: Mutex::new(Instant::now()),
        });
        let upstream = upstream.to_owned();
        let stopping = stop.clone();
        thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(&upstream) {
                            splice(client, server, pacer.clone(), stopping.clone());
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Throttle { addr, stop })
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies both ways on two threads; the server→client direction is paced.
fn splice(client: TcpStream, server: TcpStream, pacer: Arc<Pacer>, stop: Arc<AtomicBool>) {
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let stop2 = stop.clone();
    thread::spawn(move || copy(client, server, None, &stop));
    thread::spawn(move || copy(s2, c2, Some(&pacer), &stop2));
}

fn copy(mut from: TcpStream, mut to: TcpStream, pacer: Option<&Pacer>, stop: &AtomicBool) {
    let mut buf = vec![0u8; 16 << 10];
    while !stop.load(Ordering::Relaxed) {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(p) = pacer {
            p.take(n);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
