//! The proxy under test, as a child process of the test: `strait -c <temp>/config.yaml
//! --concurrency 2 --admin-address-path <temp>/admin.addr`, stderr kept in
//! `<temp>/stderr.log` and printed when a test fails.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;

use super::client::{self, Proto};
use super::eventually;

const STARTUP: Duration = Duration::from_secs(20);

pub struct Strait {
    child: Child,
    dir: PathBuf,
    config: PathBuf,
    admin: Option<SocketAddr>,
    exited: Option<ExitStatus>,
}

fn fresh_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "strait-test-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create test temp dir");
    dir
}

/// Runs the proxy in `dir`. Its wasm compile cache is `dir/wasm-cache` unless `env`
/// names another `STRAIT_WASM_CACHE_DIR`, so tests never share or keep one.
fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let stderr = std::fs::File::create(dir.join("stderr.log")).expect("create stderr.log");
    let stdout = std::fs::File::create(dir.join("stdout.log")).expect("create stdout.log");
    Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(args)
        .env("STRAIT_WASM_CACHE_DIR", dir.join("wasm-cache"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn strait")
}

/// An address on 127.0.0.1 that nothing listens on right now (for quick mode, which
/// has no admin to report a port-0 listener's port).
pub fn unused_local_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

impl Strait {
    /// Starts the proxy with `yaml` (which must have an admin on port 0) and waits until
    /// `/ready` says LIVE.
    pub async fn start(yaml: &str) -> Strait {
        Strait::start_with(yaml, &[]).await
    }

    pub async fn start_with(yaml: &str, extra_args: &[&str]) -> Strait {
        Strait::start_with_env(yaml, extra_args, &[]).await
    }

    /// `start_with`, with these environment variables for the proxy.
    pub async fn start_with_env(yaml: &str, extra_args: &[&str], env: &[(&str, &str)]) -> Strait {
        let dir = fresh_dir();
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let admin_file = dir.join("admin.addr");
        let mut args = vec![
            "-c".to_owned(),
            config.display().to_string(),
            "--admin-address-path".into(),
            admin_file.display().to_string(),
        ];
        if !extra_args.contains(&"--concurrency") {
            args.extend(["--concurrency".into(), "2".into()]);
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = spawn(&dir, &args, env);
        let mut strait = Strait {
            child,
            dir,
            config,
            admin: None,
            exited: None,
        };
        let admin = eventually(STARTUP, "the admin address file", || {
            let exited = strait.child.try_wait().ok().flatten();
            let addr = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|s| s.trim().parse::<SocketAddr>().ok());
            async move {
                if let Some(status) = exited {
                    panic!("strait exited during startup with {status}");
                }
                addr
            }
        })
        .await;
        strait.admin = Some(admin);
        eventually(STARTUP, "/ready to answer 200", || {
            let fut = client::request(admin, Proto::H1, Method::GET, "admin", "/ready");
            async move { (fut.await.ok()?.status == 200).then_some(()) }
        })
        .await;
        strait
    }

    /// Quick mode, `--listen A --upstream U`. No admin; ready once `A` accepts.
    pub async fn start_quick(upstream: &str) -> (Strait, SocketAddr) {
        let dir = fresh_dir();
        let listen = unused_local_addr();
        let child = spawn(
            &dir,
            &[
                "--listen",
                &listen.to_string(),
                "--upstream",
                upstream,
                "--concurrency",
                "2",
            ],
            &[],
        );
        let mut strait = Strait {
            child,
            config: dir.join("none"),
            dir,
            admin: None,
            exited: None,
        };
        eventually(STARTUP, "the quick-mode listener to accept", || {
            let exited = strait.child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    panic!("strait exited during startup with {status}");
                }
                tokio::net::TcpStream::connect(listen)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
        (strait, listen)
    }

    /// Starts the proxy with a config it must refuse; returns (exit code, stderr).
    pub async fn start_expect_failure(yaml: &str) -> (i32, String) {
        Strait::start_expect_failure_env(yaml, &[]).await
    }

    /// `strait --mode validate -c <yaml>`: (exit code, stdout, stderr).
    pub async fn validate(yaml: &str) -> (i32, String, String) {
        let dir = fresh_dir();
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_strait"))
            .args(["--mode", "validate", "-c", &config.display().to_string()])
            .env("STRAIT_WASM_CACHE_DIR", dir.join("wasm-cache"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(STARTUP, run)
            .await
            .expect("validation ends in time")
            .expect("run strait");
        let _ = std::fs::remove_dir_all(&dir);
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (
            out.status.code().unwrap_or(-1),
            text(&out.stdout),
            text(&out.stderr),
        )
    }

    /// `start_expect_failure`, with these environment variables for the proxy.
    pub async fn start_expect_failure_env(yaml: &str, env: &[(&str, &str)]) -> (i32, String) {
        let dir = fresh_dir();
        let config = dir.join("config.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let admin_file = dir.join("admin.addr");
        let child = spawn(
            &dir,
            &[
                "-c",
                &config.display().to_string(),
                "--concurrency",
                "2",
                "--admin-address-path",
                &admin_file.display().to_string(),
            ],
            env,
        );
        let mut strait = Strait {
            child,
            config,
            dir,
            admin: None,
            exited: None,
        };
        let status = strait
            .wait_exit(STARTUP)
            .await
            .unwrap_or_else(|| panic!("strait kept running with an invalid config:\n{yaml}"));
        let stderr = strait.stderr();
        let _ = std::fs::remove_dir_all(&strait.dir);
        (status.code().unwrap_or(-1), stderr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("this proxy has an admin listener")
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// The bound address of the listener called `name`, from `/listeners?format=json`.
    pub async fn addr(&self, name: &str) -> SocketAddr {
        let (status, body) = self.admin_get("/listeners?format=json").await;
        assert_eq!(status, 200, "/listeners: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("/listeners is JSON");
        let statuses = v["listener_statuses"]
            .as_array()
            .expect("listener_statuses");
        let l = statuses
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no listener {name} in {body}"));
        let sa = &l["local_address"]["socket_address"];
        let ip: std::net::IpAddr = sa["address"]
            .as_str()
            .expect("address")
            .parse()
            .expect("ip");
        let ip = if ip.is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            ip
        };
        SocketAddr::new(ip, sa["port_value"].as_u64().expect("port_value") as u16)
    }

    /// The `main` listener of a `Bootstrap` config.
    pub async fn main_addr(&self) -> SocketAddr {
        self.addr("main").await
    }

    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        self.admin_call(Method::GET, path).await
    }

    pub async fn admin_post(&self, path: &str) -> (u16, String) {
        self.admin_call(Method::POST, path).await
    }

    async fn admin_call(&self, method: Method, path: &str) -> (u16, String) {
        let r = client::request(self.admin_addr(), Proto::H1, method.clone(), "admin", path)
            .await
            .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"));
        (r.status, r.text())
    }

    /// A counter or gauge from `/stats` (`name: value` lines); `None` if absent or not
    /// an integer (histograms).
    pub async fn stat(&self, name: &str) -> Option<i64> {
        let (_, body) = self.admin_get("/stats").await;
        body.lines().find_map(|line| {
            let (k, v) = line.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Every counter and gauge in `/stats`.
    pub async fn stats(&self) -> std::collections::BTreeMap<String, i64> {
        let (_, body) = self.admin_get("/stats").await;
        body.lines()
            .filter_map(|line| {
                let (k, v) = line.split_once(": ")?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// Waits (bounded) until stat `name` satisfies `ok`; returns its value. Stats are
    /// recorded when a stream ends, which can be just after the client saw the end.
    pub async fn wait_stat(&self, name: &str, ok: impl Fn(i64) -> bool) -> i64 {
        eventually(Duration::from_secs(10), &format!("stat {name}"), || async {
            self.stat(name).await.filter(|v| ok(*v))
        })
        .await
    }

    /// Atomically replaces the config file (write a temp file, rename over), as config
    /// managers do. The proxy's file watcher picks it up.
    pub fn rewrite_config(&self, yaml: &str) {
        let tmp = self.dir.join("config.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write new config");
        std::fs::rename(&tmp, &self.config).expect("rename config into place");
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited {
                return Some(s);
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
                return Some(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident set size of the proxy, from /proc/<pid>/status.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }
}

impl Drop for Strait {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- strait stderr ({}) ----\n{}\n---- end of strait stderr ----",
                self.dir.display(),
                self.stderr()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
