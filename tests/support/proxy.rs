//! A TCP proxy on loopback that delays what the client sends, for tests and
//! benchmarks of a slow or distant Supabase: a real socket in between, not an
//! imitation of PostgREST. The delay can change while it runs (`set_delay`);
//! what the client sends reaches the upstream that much later (a delay line:
//! chunks keep flowing meanwhile), and the answers come back at once.
//! Included with `#[path]` by `tests/it` (and the benchmarks that need it).

// Each includer uses part of what is here.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy, stopped when dropped.
pub struct Proxy {
    /// `http://127.0.0.1:PORT`: use it where the upstream's URL would go.
    pub url: String,
    delay_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forward every connection to `upstream` (`host:port`), each client
    /// chunk held `delay` first.
    pub async fn start(upstream: &str, delay: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let delay_ms = Arc::new(AtomicU64::new(delay.as_millis() as u64));
        let upstream = upstream.to_owned();
        let d = Arc::clone(&delay_ms);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, d) = (upstream.clone(), Arc::clone(&d));
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        pipe(client, server, d).await;
                    }
                });
            }
        });
        Proxy {
            url,
            delay_ms,
            task,
        }
    }

    /// The delay from now on (connections already open too).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the client sends goes through a delay line: each chunk is stamped when
/// it arrives and written upstream `delay` later, while the next ones are
/// already being read. A request meets the delay once however many chunks it
/// has, as over a distant link: latency is added, bandwidth is not taken.
async fn pipe(client: TcpStream, server: TcpStream, delay_ms: Arc<AtomicU64>) {
    // A link adds latency, not Nagle's waits of a hop of its own: each side's
    // endpoint keeps its own setting.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let due = tokio::time::Instant::now()
                + Duration::from_millis(delay_ms.load(Ordering::Relaxed));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if sw.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(read, write, down);
}
