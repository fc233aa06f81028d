//! A MariaDB server of one test's own, on a free port and a fresh data folder, started with the
//! flags the test needs (a binary log for the follower tests): tests that change server-wide
//! state (purging the binary log, schema changes under a follower) never touch the shared stack.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::text;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `mariadbd` with its data folder; killed and removed when dropped.
pub struct OwnMariadb {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl OwnMariadb {
    /// A server with a binary log in row format with full row images, as the follower needs
    /// (server ids differ per server so a pair never shares one).
    pub async fn with_binlog(server_id: u32) -> OwnMariadb {
        OwnMariadb::start(&[
            "--log-bin=binlog".to_string(),
            "--binlog-format=ROW".to_string(),
            "--binlog-row-image=FULL".to_string(),
            format!("--server-id={server_id}"),
        ])
        .await
    }

    /// A server without a binary log.
    pub async fn plain() -> OwnMariadb {
        OwnMariadb::start(&[]).await
    }

    /// A server started with `extra` flags beside the usual ones.
    pub async fn start(extra: &[String]) -> OwnMariadb {
        let dir = tempfile::tempdir().unwrap();
        // Its own tmpdir: a starting server deletes every `#sql*` file in its tmpdir, which in
        // /tmp would include the shared servers' temporary tables.
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let install = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=8M",
            ])
            .arg(format!("--datadir={}", dir.path().join("data").display()))
            .arg(format!("--tmpdir={}", dir.path().join("tmp").display()))
            .output()
            .expect("mariadb-install-db (installed by scripts/stack up)");
        assert!(install.status.success(), "{}", text(&install));
        let port = free_port();
        let child = spawn(port, dir.path(), extra);
        let mut server = OwnMariadb { port, child, dir };
        server.wait_ready().await;
        server
    }

    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Ready when it accepts a connection; a server that exits fails at once.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let opts = mysql_async::Opts::from_url(&self.url()).unwrap();
            if let Ok(c) = mysql_async::Conn::new(opts).await {
                let _ = c.disconnect().await;
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
                panic!("the test's MariaDB exited early: {status}\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "the test's MariaDB did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spawn(port: u16, dir: &Path, extra: &[String]) -> Child {
    let server = ["/usr/sbin/mariadbd", "mariadbd"]
        .into_iter()
        .find(|p| !p.starts_with('/') || Path::new(p).exists())
        .unwrap();
    Command::new(server)
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
        .args(extra)
        .arg(format!("--datadir={}", dir.join("data").display()))
        .arg(format!("--tmpdir={}", dir.join("tmp").display()))
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--port={port}"))
        .arg(format!("--log-error={}", dir.join("server.log").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mariadbd")
}

impl Drop for OwnMariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
