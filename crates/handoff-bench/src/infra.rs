//! The fault run's own servers: a three-node NATS JetStream cluster and a Postgres, both on
//! free loopback ports with their own data directories, so the run can kill and restart
//! them without touching the machine's shared servers (and another run's data).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn run_dir(what: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "handoff-faults-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))
}

/// nats-server processes forming one JetStream cluster (one node: no cluster at all).
pub struct NatsCluster {
    nodes: Vec<NatsNode>,
    dir: PathBuf,
}

struct NatsNode {
    port: u16,
    cluster_port: u16,
    process: Option<Child>,
}

impl NatsCluster {
    pub async fn start(nodes: usize) -> anyhow::Result<Self> {
        let dir = run_dir("nats");
        std::fs::create_dir_all(&dir)?;
        let mut cluster = Self {
            nodes: (0..nodes)
                .map(|_| {
                    Ok(NatsNode {
                        port: free_port()?,
                        cluster_port: free_port()?,
                        process: None,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            dir,
        };
        for i in 0..nodes {
            cluster.up(i)?;
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Every node's client URL, as a client's server list.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    fn up(&mut self, i: usize) -> anyhow::Result<()> {
        // `BENCH_NATS_SERVER` runs the cluster on another build (to tell the hub's faults
        // from the server's); else Debian's.
        let chosen = std::env::var("BENCH_NATS_SERVER").ok();
        let binary = chosen.as_deref().unwrap_or_else(|| {
            ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .unwrap_or("nats-server")
        });
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let node = &self.nodes[i];
        let mut command = Command::new(binary);
        command
            .args(["-a", "127.0.0.1", "-p", &node.port.to_string(), "-js"])
            .args(["-n", &format!("n{i}")])
            .arg("-sd")
            .arg(self.dir.join(format!("n{i}")));
        if self.nodes.len() > 1 {
            command
                .args(["--cluster_name", "handoff-faults"])
                .args([
                    "--cluster",
                    &format!("nats://127.0.0.1:{}", node.cluster_port),
                ])
                .args(["--routes", &routes.join(",")]);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("n{i}.log")))?)
            .kill_on_drop(true)
            .spawn()?;
        self.nodes[i].process = Some(child);
        Ok(())
    }

    /// Until JetStream answers its API on every node (a cluster has elected its leader).
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        for node in &self.nodes {
            let url = format!("nats://127.0.0.1:{}", node.port);
            loop {
                let answered = async {
                    let client = async_nats::connect(&url).await.ok()?;
                    let reply = tokio::time::timeout(
                        Duration::from_secs(1),
                        client.request("$JS.API.INFO", "".into()),
                    )
                    .await
                    .ok()?
                    .ok()?;
                    (!String::from_utf8_lossy(&reply.payload).contains("\"error\"")).then_some(())
                }
                .await;
                if answered.is_some() {
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "nats-server on {url} never became ready (see {})",
                    self.dir.display()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// SIGKILL of node `i`: what it had not written is gone.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[i].process.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Node `i` back, with the store it had.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.up(i)?;
        self.wait_ready().await
    }

    /// Every node stopped the way an operator stops it (SIGTERM), then started again.
    pub async fn restart_all(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            if let Some(mut child) = node.process.take() {
                if let Some(pid) = child.id() {
                    let _ = Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status()
                        .await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                let _ = child.start_kill();
            }
        }
        for i in 0..self.nodes.len() {
            self.up(i)?;
        }
        self.wait_ready().await
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Postgres of the run's own (initdb into a temporary directory, trust on loopback).
pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
}

impl OwnPostgres {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = run_dir("pg");
        std::fs::create_dir_all(&dir)?;
        let pg = Self {
            port: free_port()?,
            dir,
        };
        // Postgres refuses to run as root: the data directory is then the `postgres` user's.
        if as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pg.dir)
                .status()
                .await?;
            anyhow::ensure!(status.success(), "chown of {} failed", pg.dir.display());
        }
        pg.pg(&format!(
            "initdb -D {dir}/data -A trust -U postgres --no-sync >{dir}/initdb.log 2>&1",
            dir = pg.dir.display()
        ))
        .await?;
        pg.ctl("start").await?;
        Ok(pg)
    }

    /// The server's URL for database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// A fast restart: open sessions are cut, the server comes back with its data.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.ctl("restart -m fast").await
    }

    async fn ctl(&self, action: &str) -> anyhow::Result<()> {
        self.pg(&format!(
            "pg_ctl -D {dir}/data -l {dir}/server.log -w -o '-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off' {action}",
            dir = self.dir.display(),
            port = self.port
        ))
        .await
    }

    /// Runs a Postgres program from the newest installed version's directory, as the
    /// `postgres` user when this process is root.
    async fn pg(&self, command: &str) -> anyhow::Result<()> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")?
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .filter(|p| p.exists())
            .max()
            .ok_or_else(|| anyhow::anyhow!("no Postgres under /usr/lib/postgresql"))?;
        let line = format!("{}/{command}", bin.display());
        let status = if as_root() {
            Command::new("su")
                .args(["postgres", "-s", "/bin/sh", "-c", &line])
                .status()
                .await?
        } else {
            Command::new("sh").args(["-c", &line]).status().await?
        };
        anyhow::ensure!(
            status.success(),
            "`{line}` failed (see {})",
            self.dir.display()
        );
        Ok(())
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).max());
        if let Some(bin) = bin {
            let line = format!(
                "{}/pg_ctl -D {}/data -m immediate stop",
                bin.display(),
                self.dir.display()
            );
            let _ = if as_root() {
                std::process::Command::new("su")
                    .args(["postgres", "-s", "/bin/sh", "-c", &line])
                    .status()
            } else {
                std::process::Command::new("sh")
                    .args(["-c", &line])
                    .status()
            };
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
