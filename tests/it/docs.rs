//! Docs as tests: every `sh` block of README.md and docs/*.md runs, in the order a reader
//! meets it, against a live server, so no document can drift from the binary.
//!
//! How a document runs:
//! - its `sh` blocks are concatenated into one `bash -euo pipefail` script (later blocks use
//!   the variables of earlier ones, as a reader's shell does), run in a fresh directory where
//!   the script first starts `tessera serve` on its defaults (`data/` and `certs/` there), as
//!   the reader does in another terminal;
//! - `tessera` on the PATH is the binary under test; `curl` fails on an HTTP error status
//!   (`--fail-with-body`) unless the command prints the status itself (`-w '%{http_code}'`),
//!   in which case a trailing `# 204` comment on the line is the status it must print; a
//!   command with a trailing `# fails` comment must fail;
//! - the only rewrite is the port: `localhost:8443` and `127.0.0.1:8443` become the test
//!   server's free port (and `TESSERA_ADDR` says the same);
//! - a block a reader is not meant to run as is (a command that starts the server, needs
//!   several machines, or is a fragment of a file) is preceded by the line
//!   `<!-- not run: <why> -->`; a block preceded by `<!-- run with the server stopped -->`
//!   runs with the server stopped (it is started again after the block); any other `sh`
//!   block runs. Other languages (`ini`, `toml`,
//!   `json`, `cron`) are not shell and are not run.
//!
//! Every process a script starts is in its own process group, killed when it ends.

use crate::proc::Timed;
use std::{
    fs,
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::{BIN, Home};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A fenced `sh` block: where it starts, its text, why it is not run (if it is not), and
/// whether it runs with the server stopped.
#[derive(Debug)]
struct Block {
    line: usize,
    text: String,
    not_run: Option<String>,
    stopped: bool,
}

/// The `sh` blocks of a Markdown document, in order.
fn blocks(doc: &str) -> Vec<Block> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_start();
        if let Some(info) = fence.strip_prefix("```") {
            let start = i;
            let mut text = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                text.push_str(lines[i]);
                text.push('\n');
                i += 1;
            }
            if info.trim() == "sh" {
                let before = start.checked_sub(1).map_or("", |p| lines[p].trim());
                let not_run = before
                    .strip_prefix("<!-- not run:")
                    .and_then(|r| r.strip_suffix("-->"))
                    .map(|r| r.trim().to_owned());
                out.push(Block {
                    line: start + 1,
                    text,
                    not_run,
                    stopped: before == "<!-- run with the server stopped -->",
                });
            }
        }
        i += 1;
    }
    out
}

/// Joins continued lines (`\` at the end) and turns `… -w '%{http_code}\n' … # 204` into a
/// check that the command printed 204.
fn checked(text: &str, file: &str, line: usize) -> String {
    let joined = text.replace("\\\n", " ");
    let mut out = String::new();
    for l in joined.lines() {
        if let Some(cmd) = l.trim_end().strip_suffix("# fails") {
            out.push_str(&format!(
                "if {cmd}; then echo \"{file} near line {line}: this should have failed: {}\" >&2; \
                 exit 1; fi\n",
                cmd.trim().replace('"', "'").replace('$', "\\$")
            ));
            continue;
        }
        let status = l.rsplit_once("# ").and_then(|(cmd, want)| {
            let want = want.trim();
            (cmd.contains("%{http_code}")
                && want.len() == 3
                && want.bytes().all(|b| b.is_ascii_digit()))
            .then(|| (cmd.trim_end().to_owned(), want.to_owned()))
        });
        match status {
            Some((cmd, want)) => out.push_str(&format!(
                "got=$({cmd}); [ \"$got\" = {want} ] || {{ echo \"{file} near line {line}: \
                 got $got, the document says {want}: {}\" >&2; exit 1; }}\n",
                cmd.replace('"', "'").replace('$', "\\$")
            )),
            None => {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// A directory for the PATH: `tessera` (the binary under test) and a strict `curl`.
fn tools(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("tessera")).unwrap();
    let curl = bin.join("curl");
    fs::write(
        &curl,
        "#!/bin/sh\n# The documents' curl: an HTTP error fails the command, unless it prints the\n\
         # status itself.\ncase \"$*\" in *http_code*) exec /usr/bin/curl \"$@\";; esac\n\
         exec /usr/bin/curl --fail-with-body \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&curl, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// How the script starts and stops the server: `tessera serve` on its defaults in the
/// current directory, on `$PORT`, its output in `server.log`; started once the directory is
/// ready, like a reader's server in another terminal.
const SERVER: &str = r#"
start_server() {
  tessera serve --listen "127.0.0.1:$PORT" >> server.out 2>> server.log &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    /usr/bin/curl -s -o /dev/null --cacert certs/ca.pem "https://localhost:$PORT/healthz" && return 0
    kill -0 "$SERVER_PID" || { echo "the server exited" >&2; return 1; }
    sleep 0.1
  done
  echo "the server did not start" >&2; return 1
}
stop_server() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; }
start_server
"#;

/// Runs the `sh` blocks of `doc` (relative to the repository) against a fresh server. Returns
/// how many blocks ran.
fn run_doc(doc: &str) -> usize {
    let text = fs::read_to_string(Path::new(ROOT).join(doc)).unwrap();
    let blocks = blocks(&text);
    let home = Home::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = home.tmp.path();
    let bin = tools(dir);
    let mut script = format!("set -euo pipefail\nPORT={port}\n{SERVER}");
    let mut ran = 0;
    for b in &blocks {
        if let Some(why) = &b.not_run {
            assert!(!why.is_empty(), "{doc}:{}: say why it is not run", b.line);
            continue;
        }
        ran += 1;
        script.push_str(&format!("echo '### {doc}:{}' >&2\n", b.line));
        if b.stopped {
            script.push_str("stop_server\n");
        }
        script.push_str(&checked(&b.text, doc, b.line));
        if b.stopped {
            script.push_str("start_server\n");
        }
    }
    let script = script
        .replace("localhost:8443", &format!("localhost:{port}"))
        .replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"));
    fs::write(dir.join("doc.sh"), &script).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut child = Command::new("bash")
        .arg("doc.sh")
        .current_dir(dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("LANG", "C.UTF-8")
        .env("NO_COLOR", "1")
        .env("TESSERA_ADDR", format!("https://localhost:{port}"))
        // docs/gateway.md's files go here, not to /etc.
        .env("G", dir.join("gateway"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id() as i32;
    // Everything the script started goes with it, however the test ends.
    struct Group(i32);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0)])
                .stderr(Stdio::null())
                .status_timed();
        }
    }
    let _group = Group(pgid);
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(_group);
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    match status {
        Some(s) if s.success() => {}
        other => panic!(
            "{doc} did not run as written ({other:?}); the last block started is the last \
             '###' line.\nstderr:\n{}\nstdout:\n{}\nserver log:\n{}",
            tail(&err),
            tail(&out),
            tail(&fs::read_to_string(home.log()).unwrap_or_default())
        ),
    }
    ran
}

#[test]
fn every_shell_block_is_run_or_says_why_not() {
    let mut docs = vec!["README.md".to_owned()];
    for e in fs::read_dir(Path::new(ROOT).join("docs")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            docs.push(format!("docs/{name}"));
        }
    }
    for doc in docs {
        let text = fs::read_to_string(Path::new(ROOT).join(&doc)).unwrap();
        for b in blocks(&text) {
            match b.not_run {
                Some(why) => assert!(why.len() > 10, "{doc}:{}: say why it is not run", b.line),
                None => assert!(
                    RUN.contains(&doc.as_str()),
                    "{doc}:{}: a shell block in a document no test runs",
                    b.line
                ),
            }
        }
        // A block the parser cannot see would escape the test: every fence is closed.
        assert_eq!(
            text.lines()
                .filter(|l| l.trim_start().starts_with("```"))
                .count()
                % 2,
            0,
            "{doc}: an unclosed code fence"
        );
    }
}

#[test]
fn the_harness_catches_a_wrong_status_and_a_failing_command() {
    let dir = tempfile::tempdir().unwrap();
    let bin = tools(dir.path());
    let run = |script: &str| {
        Command::new("bash")
            .args(["-c", &format!("set -euo pipefail\n{script}")])
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .output_timed()
            .unwrap()
            .status
            .success()
    };
    assert!(run(&checked("true\n", "x", 1)));
    assert!(!run(&checked("false\ntrue\n", "x", 1)));
    assert!(run(&checked(
        "printf 204 || echo '%{http_code}' # 204\n",
        "x",
        1
    )));
    assert!(!run(&checked(
        "printf 401 || echo '%{http_code}' # 204\n",
        "x",
        1
    )));
    assert!(run(&checked("false # fails\n", "x", 1)));
    assert!(!run(&checked("true # fails\n", "x", 1)));
    assert!(
        !run("curl -sS https://localhost:1/"),
        "the strict curl fails on a refused connection"
    );
    let b = blocks(
        "<!-- not run: it starts the server -->\n```sh\nserve\n```\n\n```sh\nls\n```\n\
         <!-- run with the server stopped -->\n```sh\nls\n```\n",
    );
    assert_eq!(b.len(), 3);
    assert!(b[2].stopped && !b[1].stopped);
    assert_eq!(b[0].not_run.as_deref(), Some("it starts the server"));
    assert!(b[1].not_run.is_none());
}

macro_rules! doc_tests {
    ($($name:ident => $doc:literal, $min:literal;)*) => {
        /// The documents whose blocks run.
        const RUN: &[&str] = &[$($doc),*];
        $(
        #[test]
        fn $name() {
            let ran = run_doc($doc);
            assert!(ran >= $min, "{}: only {ran} blocks ran", $doc);
        }
    )*};
}

doc_tests! {
    readme => "README.md", 1;
    guide => "docs/guide.md", 2;
    access => "docs/access.md", 3;
    keys => "docs/keys.md", 1;
    pki => "docs/pki.md", 3;
    operations => "docs/operations.md", 3;
    api => "docs/api.md", 1;
    gateway => "docs/gateway.md", 1;
}
