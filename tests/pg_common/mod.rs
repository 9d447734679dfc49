//! A throwaway PostgreSQL server for tests: the machine's own binaries (Debian package
//! `postgresql`, `/usr/lib/postgresql/<version>/bin`), a fresh cluster in a temporary
//! directory, listening only on a unix socket inside it, `fsync=off`; stopped (fast
//! shutdown) and removed when the [`TestPostgres`] is dropped. Also stopped when the test
//! process dies (`setpriv --pdeathsig`).
//!
//! `initdb` refuses to run as root, so as root the server runs as the unprivileged user
//! `nobody` (through `setpriv`), owning the temporary directory.
//!
//! Missing binaries fail the test with the install line, never skip it:
//! `apt-get install -y postgresql` (or set `LARK_TEST_PG_BIN` to a directory holding
//! `initdb` and `postgres`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lark_auth::secret::Secret;
use lark_auth::store::PostgresOptions;

/// The install line printed when the server binaries are missing.
pub const INSTALL_LINE: &str = "apt-get install -y postgresql";

/// The database user of the test cluster (trust authentication on the socket).
pub const USER: &str = "lark";

/// A running throwaway server.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
}

/// The directory holding `initdb` and `postgres`: `LARK_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LARK_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").exists() && dir.join("postgres").exists(),
            "LARK_TEST_PG_BIN={} holds no initdb and postgres: install the PostgreSQL \
             server with `{INSTALL_LINE}`, or point it at their directory",
            dir.display()
        );
        return dir;
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").exists() && bin.join("postgres").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries (initdb, postgres) not found under \
             /usr/lib/postgresql/<version>/bin: these tests start a throwaway server. \
             Install them with `{INSTALL_LINE}` (as root; `sudo {INSTALL_LINE}` otherwise), \
             or set LARK_TEST_PG_BIN to the directory holding initdb and postgres"
        ),
    }
}

fn output_of(cmd: &mut Command) -> String {
    match cmd.output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Err(_) => String::new(),
    }
}

/// True when this process runs as root.
fn is_root() -> bool {
    output_of(Command::new("id").arg("-u")) == "0"
}

/// A command that runs `program` as the unprivileged user when we are root, and in any
/// case dies with us (parent-death signal: fast shutdown).
fn command(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg("--pdeathsig").arg("INT");
    if is_root() {
        let uid = output_of(Command::new("id").args(["-u", "nobody"]));
        let gid = output_of(Command::new("id").args(["-g", "nobody"]));
        assert!(
            !uid.is_empty() && !gid.is_empty(),
            "running as root and no user `nobody` to run initdb as (initdb refuses root)"
        );
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .arg("--clear-groups");
    }
    cmd.arg(program);
    cmd
}

/// Starts `postgres` on the cluster in `dir` (data in `dir/data`, socket in `dir`, log
/// appended to `dir/server.log`).
fn spawn_server(bin: &Path, dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("log file");
    command(&bin.join("postgres"))
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-k")
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=100",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start postgres")
}

impl TestPostgres {
    /// Creates a cluster and starts the server; waits until it accepts connections.
    ///
    /// # Panics
    /// When the binaries are missing (with the install line) or the server does not
    /// start (with its log).
    pub fn start() -> TestPostgres {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("lark-pg")
            .tempdir()
            .expect("temp dir");
        if is_root() {
            let uid: u32 = output_of(Command::new("id").args(["-u", "nobody"]))
                .parse()
                .expect("uid of nobody");
            let gid: u32 = output_of(Command::new("id").args(["-g", "nobody"]))
                .parse()
                .expect("gid of nobody");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--auth=trust", "-N", "-E", "UTF8", "--locale=C"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb (setpriv from util-linux must be installed)");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let child = spawn_server(&bin, dir.path());
        let mut server = TestPostgres {
            dir,
            bin,
            child: Some(child),
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(self.dir.path())
                .args(["-U", USER, "-d", "postgres"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("postgres exited at start ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready after 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The socket directory (the `host` of a connection string).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A libpq connection string to database `postgres` as [`USER`].
    pub fn url(&self) -> String {
        format!(
            "host={} port=5432 user={USER} dbname=postgres",
            self.dir.path().display()
        )
    }

    /// Store options for `schema` on this server, with short timeouts.
    pub fn options(&self, schema: &str) -> PostgresOptions {
        let mut options = PostgresOptions::new(Secret::new(self.url()), schema);
        options.connect_timeout = Duration::from_secs(5);
        options.operation_timeout = Duration::from_secs(10);
        options
    }

    /// Runs SQL through `psql` (stop on the first error); returns its output, unaligned.
    ///
    /// # Panics
    /// When psql fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.dir.path())
            .args(["-U", USER, "-d", "postgres", "-X", "-A", "-t", "-v"])
            .arg("ON_ERROR_STOP=1")
            .arg("-c")
            .arg(sql)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the server (fast shutdown), waiting up to 10 s, then kills it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the server again after [`TestPostgres::stop`] (same data, same socket);
    /// waits until it accepts connections.
    ///
    /// # Panics
    /// When it is still running or does not start (with its log).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.child = Some(spawn_server(&self.bin, self.dir.path()));
        self.wait_ready();
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
