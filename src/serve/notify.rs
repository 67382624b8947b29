//! systemd's readiness protocol (`sd_notify`), for `Type=notify` units: a
//! datagram to the socket named by `$NOTIFY_SOCKET`. `READY=1` once the daemon
//! serves, `WATCHDOG=1` from the drain loop (so a stuck loop, not only a dead
//! process, gets restarted), `STOPPING=1` on shutdown. Without
//! `$NOTIFY_SOCKET` (not under systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where to send notifications, and how often the watchdog wants a ping.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: Option<PathBuf>,
    /// Half of `$WATCHDOG_USEC`, when systemd asks for pings.
    every: Option<Duration>,
    last_ping: std::sync::Mutex<Option<Instant>>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (ignored when `$WATCHDOG_PID`
    /// names another process).
    pub(crate) fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from);
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let every = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|_| for_us)
            .map(|u| Duration::from_micros(u / 2));
        Notifier::new(socket, every)
    }

    pub(crate) fn new(socket: Option<PathBuf>, every: Option<Duration>) -> Notifier {
        Notifier {
            socket,
            every,
            last_ping: std::sync::Mutex::new(None),
        }
    }

    /// Send `state` (e.g. `READY=1`); a failure is logged, never fatal.
    pub(crate) fn notify(&self, state: &str) {
        let Some(path) = &self.socket else { return };
        let sent = UnixDatagram::unbound().and_then(|s| {
            match path.to_str().and_then(|p| p.strip_prefix('@')) {
                // An abstract socket (systemd's default on recent versions).
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt;
                    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    s.send_to_addr(state.as_bytes(), &addr)
                }
                None => s.send_to(state.as_bytes(), path),
            }
        });
        if let Err(e) = sent {
            tracing::debug!(error = %e, state, "cannot notify systemd");
        }
    }

    /// `WATCHDOG=1`, at most every half watchdog period.
    pub(crate) fn watchdog(&self) {
        let Some(every) = self.every else { return };
        let mut last = crate::sync::lock(&self.last_ping);
        if last.is_none_or(|t| t.elapsed() >= every) {
            *last = Some(Instant::now());
            self.notify("WATCHDOG=1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_reach_the_socket_and_the_watchdog_is_paced() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = Notifier::new(Some(path), Some(Duration::from_secs(3600)));
        let mut buf = [0u8; 64];
        n.notify("READY=1");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
        n.watchdog();
        n.watchdog();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        rx.set_nonblocking(true).unwrap();
        assert!(rx.recv(&mut buf).is_err(), "the second ping came too early");
        // Not under systemd: nothing happens.
        Notifier::new(None, None).notify("READY=1");
    }
}
