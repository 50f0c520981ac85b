//! An eventfd used as the emulated VPU's interrupt line.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;

/// A non-blocking, close-on-exec eventfd counter.
///
/// `signal` adds 1; `wait` blocks until the counter is non-zero and then
/// consumes all of it (several signals before a wait coalesce into one wake-up,
/// like a level-triggered interrupt that is acknowledged once).
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(EventFd { fd })
    }

    /// Raises the line. Never blocks: a counter at its maximum is already
    /// signalled, which is reported as success.
    pub fn signal(&self) -> io::Result<()> {
        loop {
            match rustix::io::write(&self.fd, &1u64.to_ne_bytes()) {
                Ok(8) => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "short eventfd write: {n} of 8 bytes"
                    )));
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits until signalled or until `timeout` elapses (`None`: forever).
    ///
    /// Returns `Ok(true)` if signalled (the counter is consumed), `Ok(false)`
    /// on timeout. Interrupted syscalls are restarted with the remaining time.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if self.try_consume()? {
                return Ok(true);
            }
            let remaining = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    Some(Timespec::try_from(d - now).map_err(|_| {
                        io::Error::new(io::ErrorKind::InvalidInput, "timeout too large")
                    })?)
                }
            };
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, remaining.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            // Readable or timed out or interrupted: the loop re-checks the
            // counter (another waiter may have consumed it) and the deadline.
        }
    }

    /// Consumes the counter if non-zero, without blocking.
    fn try_consume(&self) -> io::Result<bool> {
        let mut buf = [0u8; 8];
        loop {
            match rustix::io::read(&self.fd, &mut buf) {
                Ok(8) => return Ok(true),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "short eventfd read: {n} of 8 bytes"
                    )));
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn timeout_without_signal() {
        let e = EventFd::new().unwrap();
        let t = Instant::now();
        assert!(!e.wait(Some(Duration::from_millis(30))).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(30));
        assert!(!e.wait(Some(Duration::ZERO)).unwrap());
    }

    #[test]
    fn signals_coalesce_and_are_consumed() {
        let e = EventFd::new().unwrap();
        e.signal().unwrap();
        e.signal().unwrap();
        assert!(e.wait(Some(Duration::ZERO)).unwrap());
        assert!(!e.wait(Some(Duration::ZERO)).unwrap(), "counter consumed");
    }

    #[test]
    fn wakes_a_waiter_on_another_thread() {
        let e = Arc::new(EventFd::new().unwrap());
        let waiter = {
            let e = Arc::clone(&e);
            std::thread::spawn(move || e.wait(Some(Duration::from_secs(10))).unwrap())
        };
        std::thread::sleep(Duration::from_millis(20));
        e.signal().unwrap();
        assert!(waiter.join().unwrap());
    }
}
