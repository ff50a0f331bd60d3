//! A private pebble (Let's Encrypt's ACME test server, Debian's package) with its own
//! fake DNS (pebble-challtestsrv answering every name with 127.0.0.1), started from a
//! generated config in a temp dir and stopped on Drop. It validates HTTP-01 challenges on
//! the loopback port given (TLS-ALPN-01 on another), and issues certificates valid for
//! the seconds given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{
    free_port, read_lossy, register_live, stop_child, unregister_live, wait_for_port, Stop, TestCa,
    SIGTERM,
};

pub struct Pebble {
    /// The ACME directory.
    pub directory_url: String,
    /// Trust for pebble's own HTTPS (the directory and the management interface).
    pub ca_path: PathBuf,
    management: SocketAddr,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts the fake DNS and pebble, which checks HTTP-01 challenges on port
    /// `http_port`, TLS-ALPN-01 ones on `tls_port`, and issues certificates valid for
    /// `validity_seconds`.
    pub fn start(http_port: u16, tls_port: u16, validity_seconds: u64) -> Pebble {
        let dir = tempfile::Builder::new()
            .prefix("postern-pebble-")
            .tempdir()
            .expect("temp dir for pebble");
        let ca = TestCa::new(dir.path());
        let (cert, key) = ca.issue(dir.path(), "pebble", &[]);
        let (listen, management, dns, dns_management) =
            (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_seconds,
            }
        });
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).expect("write pebble config");
        let logs = dir.path().to_path_buf();
        let log = |name: &str| std::fs::File::create(logs.join(name)).expect("log file");
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdin(Stdio::null())
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("run pebble-challtestsrv (is pebble installed?)");
        register_live(dns_server.id(), Stop::Signal(SIGTERM), dir.path());
        let mut pebble = Pebble {
            directory_url: format!("https://127.0.0.1:{listen}/dir"),
            ca_path: ca.ca_path.clone(),
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            children: vec![dns_server],
            dir,
        };
        wait_for_port(dns_management, "pebble-challtestsrv", || pebble.log());
        let server = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("run pebble");
        register_live(server.id(), Stop::Signal(SIGTERM), pebble.dir.path());
        pebble.children.push(server);
        wait_for_port(listen, "pebble", || pebble.log());
        wait_for_port(management, "pebble management", || pebble.log());
        pebble
    }

    /// The root pebble issues under (random for each run), PEM.
    pub fn root(&self) -> String {
        let output = Command::new("curl")
            .args(["-sf", "--cacert"])
            .arg(&self.ca_path)
            .arg(format!("https://{}/roots/0", self.management))
            .output()
            .expect("run curl");
        assert!(output.status.success(), "pebble's root: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    }

    /// Both logs.
    pub fn log(&self) -> String {
        [
            "pebble.log",
            "pebble.err",
            "challtestsrv.log",
            "challtestsrv.err",
        ]
        .iter()
        .map(|name| {
            format!(
                "--- {name} ---\n{}",
                read_lossy(&self.dir.path().join(name))
            )
        })
        .collect()
    }

    /// Stops pebble and its DNS. Idempotent; also done on Drop.
    pub fn stop(&mut self) {
        for mut child in self.children.drain(..).rev() {
            stop_child(&mut child, Stop::Signal(SIGTERM));
            unregister_live(child.id());
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}
