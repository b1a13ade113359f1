//! Waiting on a child process with a deadline. A test never waits on a child without one: a
//! hung `openssl`, `curl` or CLI call fails its test (the child is killed and the failure names
//! it) instead of holding the whole run until CI's limit.

use std::{
    io::{self, Read},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// What a child may take unless a test says otherwise: generous, since the machine is shared.
pub const CHILD_LIMIT: Duration = Duration::from_secs(120);

/// `output()` and `status()` with a deadline.
pub trait Timed {
    /// As `Command::output` (stdin empty, stdout and stderr captured), killed after
    /// [`CHILD_LIMIT`].
    fn output_timed(&mut self) -> io::Result<Output>;
    /// As `Command::output`, killed after `limit`.
    fn output_within(&mut self, limit: Duration) -> io::Result<Output>;
    /// As `Command::status` (stdio inherited), killed after [`CHILD_LIMIT`].
    fn status_timed(&mut self) -> io::Result<ExitStatus>;
}

impl Timed for Command {
    fn output_timed(&mut self) -> io::Result<Output> {
        self.output_within(CHILD_LIMIT)
    }

    fn output_within(&mut self, limit: Duration) -> io::Result<Output> {
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        wait_output_within(child, &describe(self), limit)
    }

    fn status_timed(&mut self) -> io::Result<ExitStatus> {
        let mut child = self.spawn()?;
        wait_within(&mut child, &describe(self), CHILD_LIMIT)
    }
}

/// `Child::wait_with_output` with a deadline: the pipes are drained while waiting, so a child
/// that writes more than a pipe holds cannot block on them.
pub fn wait_output_within(mut child: Child, what: &str, limit: Duration) -> io::Result<Output> {
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let status = wait_within(&mut child, what, limit)?;
    let collect = |h: Option<thread::JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: collect(out),
        stderr: collect(err),
    })
}

/// Waits for `child` at most `limit`; past it the child is killed and reaped, and the answer is
/// an error naming it.
pub fn wait_within(child: &mut Child, what: &str, limit: Duration) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("`{what}` did not finish within {limit:?}: killed"),
            ));
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args().take(4) {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[test]
fn a_hung_child_is_killed_and_named() {
    let started = Instant::now();
    let err = Command::new("sleep")
        .arg("30")
        .output_within(Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("sleep 30"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A child that finishes in time gives its whole output, more than a pipe buffer holds.
    let out = Command::new("head")
        .args(["-c", "300000", "/dev/zero"])
        .output_timed()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), 300_000);
}
