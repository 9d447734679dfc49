//! `lark-auth top` against a whole service on the sandbox: `--once` prints every section
//! with the server's numbers; the live view, run under a pseudo-terminal (python's `pty`
//! module drives it), draws them and quits on `q` and on Ctrl-C, leaving the terminal as
//! it found it.

mod service_common;

use std::process::Output;

use service_common::{API_TOKEN, Instance, authorize_user, eventually, start_instance};

const BIN: &str = env!("CARGO_BIN_EXE_lark-auth");

/// Runs `lark-auth top <args> --server <base>` with `token`, from an empty directory (no
/// ./config.toml), off the test's System.
async fn top(i: &Instance, args: &[&str], token: &str) -> Output {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.insert(0, "top".into());
    args.extend(["--server".to_string(), i.base_url()]);
    let token = token.to_string();
    actix_rt::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        std::process::Command::new(BIN)
            .args(&args)
            .current_dir(dir.path())
            .env("LARK_AUTH_API_TOKEN", token)
            .env_remove("LARK_AUTH_SERVER")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const SECTIONS: [&str; 7] = [
    "CONNECTION",
    "EVENTS",
    "SESSIONS",
    "GRANTS",
    "REFRESH",
    "TOKEN ENDPOINT",
    "RECENT FAILURES",
];

#[actix_rt::test]
async fn top_once_prints_every_section_with_the_servers_numbers() {
    let i = start_instance().await;
    authorize_user(&i).await;
    // The grants gauge is published by the refresh scheduler's next tick.
    let metrics = i.handle.metrics().clone();
    eventually("the grant in the metrics", || {
        let text = metrics.encode();
        async move {
            text.contains("lark_auth_grants{status=\"active\"} 1")
                .then_some(())
        }
    })
    .await;

    let out = top(&i, &["--once"], API_TOKEN).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.starts_with("lark-auth top — http://127.0.0.1:"),
        "{stdout}"
    );
    let mut at = 0;
    for title in SECTIONS {
        let found = stdout[at..]
            .find(&format!("\n{title}"))
            .unwrap_or_else(|| panic!("no {title} section after byte {at}:\n{stdout}"));
        at += found + 1;
    }
    for expected in [
        "state connected, vault ok",
        "reconnects 0",
        "events -/s",
        "card.action.trigger 1",
        "finished: authorized 1, denied 0, expired 0, failed 0",
        "active 1, refresh_failed 0",
        "backlog 0",
        "of a budget of 40/s",
        "device_poll",
        "get_token answers: cache 0, vault 0, refresh 0, error 0",
    ] {
        assert!(stdout.contains(expected), "{expected} missing in\n{stdout}");
    }

    let out = top(&i, &["--once"], "wrong-token").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unauthorized"),
        "{}",
        text(&out.stderr)
    );
}

/// Runs `lark-auth top` on a 120×40 pseudo-terminal, waits until it has drawn the
/// sections, sends `key`, and reports how it ended.
const PTY_DRIVER: &str = r#"
import fcntl, os, pty, select, signal, struct, sys, termios, time
binary, server, key = sys.argv[1], sys.argv[2], sys.argv[3].encode().decode('unicode_escape').encode()
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 120, 0, 0))
    os.execv(binary, [binary, 'top', '--server', server])
buf = b''
def pump(seconds, until=lambda b: False):
    global buf
    end = time.time() + seconds
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return until(buf)
            if not data:
                return until(buf)
            buf += data
            if until(buf):
                return True
    return until(buf)
# ratatui moves the cursor over blank cells: look for words, not phrases.
drawn = pump(20, lambda b: all(t in b for t in
    [b'CONNECTION', b'EVENTS', b'SESSIONS', b'GRANTS', b'REFRESH', b'ENDPOINT', b'FAILURES',
     b'connected', b'budget']))
if not drawn:
    os.kill(pid, signal.SIGKILL)
    print('never drew the sections:', repr(buf[-3000:]))
    sys.exit(3)
os.write(fd, key)
end = time.time() + 10
while time.time() < end:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        pump(0.3)
        print('exit', os.waitstatus_to_exitcode(status))
        print('alternate screen left' if b'\x1b[?1049l' in buf else 'alternate screen kept')
        sys.exit(0)
    pump(0.1)
os.kill(pid, signal.SIGKILL)
print('still running after the key:', repr(buf[-3000:]))
sys.exit(4)
"#;

async fn top_under_a_pty(i: &Instance, key: &str) -> Output {
    let server = i.base_url();
    let key = key.to_string();
    actix_rt::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        std::process::Command::new("python3")
            .args(["-c", PTY_DRIVER, BIN, &server, &key])
            .current_dir(dir.path())
            .env("LARK_AUTH_API_TOKEN", API_TOKEN)
            .env("TERM", "xterm-256color")
            .env_remove("LARK_AUTH_SERVER")
            .output()
            .unwrap_or_else(|e| panic!("python3 is needed to drive the pseudo-terminal: {e}"))
    })
    .await
    .unwrap()
}

#[actix_rt::test]
async fn the_live_view_draws_the_sections_and_quits_on_q_and_on_ctrl_c() {
    let i = start_instance().await;
    for key in ["q", "\\x03"] {
        let out = top_under_a_pty(&i, key).await;
        let report = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "key {key}: {report}{}",
            text(&out.stderr)
        );
        assert!(report.contains("exit 0"), "key {key}: {report}");
        assert!(
            report.contains("alternate screen left"),
            "key {key}: {report}"
        );
    }
}
