//! Certificates for the TLS tests, made by the `openssl` command, and a TLS client.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A self-signed certificate for `localhost` and its key, as `<name>.crt` and `<name>.key`.
pub fn make_certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "openssl req: {out:?}");
    (cert, key)
}

/// Runs `openssl` in `dir` with whitespace-separated `args`; panics when it fails.
fn openssl_in(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args}: {out:?}");
}

/// A CA and a leaf it signs for `sans` (`DNS:…`, `IP:…`): `(ca.crt, leaf.crt, leaf.key)`.
pub fn make_ca_and_leaf(dir: &Path, sans: &str) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &str| openssl_in(dir, args);
    let new_key = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    run(&format!(
        "req -x509 {new_key} -days 2 -subj /CN=keygate-test-CA -keyout ca.key -out ca.crt"
    ));
    run(&format!(
        "req {new_key} -subj /CN=upstream -keyout leaf.key -out leaf.csr"
    ));
    std::fs::write(dir.join("leaf.ext"), format!("subjectAltName={sans}\n")).unwrap();
    run(
        "x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile leaf.ext -out leaf.crt",
    );
    (
        dir.join("ca.crt"),
        dir.join("leaf.crt"),
        dir.join("leaf.key"),
    )
}

/// Another leaf signed by the CA that [`make_ca_and_leaf`] made in `dir`, for `sans`:
/// `(<name>.crt, <name>.key)`. With no extended key usage, it serves as a client certificate
/// as well as a server's.
pub fn sign_leaf(dir: &Path, name: &str, sans: &str) -> (PathBuf, PathBuf) {
    let run = |args: &str| openssl_in(dir, args);
    run(&format!(
        "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN={name} -keyout {name}.key -out {name}.csr"
    ));
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName={sans}\n"),
    )
    .unwrap();
    run(&format!(
        "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile {name}.ext -out {name}.crt"
    ));
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

/// A blocking TLS client on one connection, its handshake done at [`TlsClient::connect`].
pub struct TlsClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
}

impl TlsClient {
    /// Connects to `addr` as `name`, trusting the CA certificates in `ca`, and completes the
    /// handshake (TLS 1.3 or 1.2).
    pub fn connect(addr: std::net::SocketAddr, ca: &Path, name: &str) -> std::io::Result<Self> {
        Self::connect_after(addr, ca, name, b"")
    }

    /// As [`TlsClient::connect`], with `preamble` sent in the clear first (a PROXY protocol
    /// header, as a load balancer sends one).
    pub fn connect_after(
        addr: std::net::SocketAddr,
        ca: &Path,
        name: &str,
        preamble: &[u8],
    ) -> std::io::Result<Self> {
        let pem = std::fs::read(ca)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(cert?).map_err(std::io::Error::other)?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(name.to_owned())
            .map_err(std::io::Error::other)?;
        let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
            .map_err(std::io::Error::other)?;
        let mut socket = std::net::TcpStream::connect(addr)?;
        socket.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        std::io::Write::write_all(&mut socket, preamble)?;
        while connection.is_handshaking() {
            connection.complete_io(&mut socket)?;
        }
        Ok(TlsClient {
            stream: rustls::StreamOwned::new(connection, socket),
        })
    }

    /// Sends `request` whole, then reads until the server closes (send `Connection: close`).
    pub fn exchange(&mut self, request: &[u8]) -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Write};
        self.stream.write_all(request)?;
        self.stream.flush()?;
        let mut response = Vec::new();
        match self.stream.read_to_end(&mut response) {
            Ok(_) => Ok(response),
            // A server that closes without close_notify: what arrived is the answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {
                Ok(response)
            }
            Err(e) => Err(e),
        }
    }
}
