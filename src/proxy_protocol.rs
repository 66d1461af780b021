//! The PROXY protocol (HAProxy's, v1 text and v2 binary), on listeners that say so
//! (`listen.proxy_protocol`): a load balancer in front of keygate states the client's address in
//! a header before the first request, and keygate takes it as the connection's client instead of
//! the balancer's own address.
//!
//! On such a listener every connection must begin with the header: one without it, or with a
//! malformed one, is closed before anything is read as HTTP, so a client that reaches the
//! listener directly cannot name an address of its choosing by sending a header of its own.
//! (On a listener without the option, a PROXY line is simply a malformed HTTP request.)
//!
//! The header is read exactly, never past its end, so the request that follows is untouched:
//! v2 by its length field, v1 a byte at a time up to its line end (at most 107 bytes, once per
//! connection).
//!
//! On a plain listener the header is read by [`crate::connections::Bounded`]. On a TLS
//! listener it comes before the handshake, which Pingora performs before keygate sees the
//! connection, so Pingora's pre-TLS hook reads it ([`BeforeTls`]) and records the client as the
//! connection's peer address.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What a v2 header begins with.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, `\r\n` included (the protocol's own bound).
const V1_MAX: usize = 107;
/// The longest v2 address block accepted: addresses and any TLVs a balancer adds (AWS, for one,
/// adds its endpoint id). The protocol allows 65,535; nothing legitimate sends more than this.
const V2_MAX_BODY: usize = 4096;

/// Reads the header at the start of `stream`. `Ok(None)`: a header that names no client (v1
/// `UNKNOWN`, v2 `LOCAL`, or an address family other than TCP over IPv4 or IPv6): the
/// connection's own peer stands.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Option<SocketAddr>> {
    let mut start = [0u8; 16];
    stream.read_exact(&mut start[..8]).await?;
    if start[..8] == V2_SIGNATURE[..8] {
        stream.read_exact(&mut start[8..]).await?;
        let len = usize::from(u16::from_be_bytes([start[14], start[15]]));
        if len > V2_MAX_BODY {
            return Err(invalid("a v2 header longer than keygate accepts"));
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        return parse_v2(&start, &body);
    }
    if !start.starts_with(b"PROXY ") {
        return Err(invalid("no PROXY protocol header"));
    }
    let mut line = Vec::with_capacity(V1_MAX);
    line.extend_from_slice(&start[..8]);
    while !line.ends_with(b"\r\n") {
        if line.len() == V1_MAX {
            return Err(invalid("a v1 header longer than 107 bytes"));
        }
        line.push(stream.read_u8().await?);
    }
    parse_v1(&line)
}

/// Reads the header on a TLS listener's raw connection, before the handshake.
pub struct BeforeTls {
    /// The whole header must arrive within this (`listen.request_head_timeout`).
    pub timeout: std::time::Duration,
    pub refused: prometheus::IntCounter,
}

#[async_trait::async_trait]
impl pingora::listeners::PreTlsProcess for BeforeTls {
    async fn process(
        &self,
        stream: &mut pingora::protocols::l4::stream::Stream,
    ) -> pingora::Result<()> {
        use pingora::protocols::{GetSocketDigest, SocketDigest};
        use std::os::unix::io::AsRawFd;
        let client = match tokio::time::timeout(self.timeout, read_header(stream)).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(self.refuse(e.to_string())),
            Err(_) => return Err(self.refuse("PROXY protocol: no header in time".into())),
        };
        if let Some(client) = client {
            // Everything that asks for the peer (the request path, the access log) now gets the
            // client the balancer named, as on a plain listener.
            let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
            let _ = digest
                .peer_addr
                .set(Some(pingora::protocols::l4::socket::SocketAddr::Inet(
                    client,
                )));
            stream.set_socket_digest(digest);
        }
        Ok(())
    }
}

impl BeforeTls {
    fn refuse(&self, why: String) -> Box<pingora::Error> {
        self.refused.inc();
        pingora::Error::explain(pingora::ErrorType::HandshakeError, why)
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("PROXY protocol: {why}"))
}

/// `PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n`, `PROXY TCP6 …`, `PROXY UNKNOWN …\r\n`.
pub fn parse_v1(line: &[u8]) -> io::Result<Option<SocketAddr>> {
    let bad = || invalid("a malformed v1 header");
    let line = line.strip_suffix(b"\r\n").ok_or_else(bad)?;
    let line = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut parts = line.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(bad());
    }
    let family = parts.next().ok_or_else(bad)?;
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let fields: Vec<&str> = parts.collect();
    let [source, _destination, source_port, destination_port] = fields[..] else {
        return Err(bad());
    };
    let ip: IpAddr = match family {
        "TCP4" => IpAddr::V4(source.parse().map_err(|_| bad())?),
        "TCP6" => IpAddr::V6(source.parse().map_err(|_| bad())?),
        _ => return Err(bad()),
    };
    // Ports are decimal without a sign or leading zeros (the spec's words); `u16` parsing
    // would take "+80" and "080".
    let port_ok = |p: &str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'))
    };
    if !port_ok(source_port) || !port_ok(destination_port) {
        return Err(bad());
    }
    let port = source_port.parse::<u16>().map_err(|_| bad())?;
    Ok(Some(SocketAddr::new(ip, port)))
}

/// The 16-byte start of a v2 header (signature, version and command, family, length) and the
/// address block after it.
pub fn parse_v2(start: &[u8; 16], body: &[u8]) -> io::Result<Option<SocketAddr>> {
    if start[..12] != V2_SIGNATURE || start[12] >> 4 != 2 {
        return Err(invalid("a malformed v2 header"));
    }
    match start[12] & 0x0f {
        // LOCAL: the balancer's own connection (a health check): no client to take.
        0 => return Ok(None),
        1 => {}
        _ => return Err(invalid("a v2 header with an unknown command")),
    }
    let short = || invalid("a v2 header too short for its addresses");
    match start[13] {
        // TCP over IPv4: source, destination, source port, destination port.
        0x11 => {
            let a: [u8; 12] = body
                .get(..12)
                .ok_or_else(short)?
                .try_into()
                .map_err(|_| short())?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[8], a[9]]),
            )))
        }
        // TCP over IPv6.
        0x21 => {
            let a: [u8; 36] = body
                .get(..36)
                .ok_or_else(short)?
                .try_into()
                .map_err(|_| short())?;
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(ip);
            Ok(Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[32], a[33]]),
            )))
        }
        // UNSPEC, UDP, UNIX sockets: nothing keygate can use as a client address.
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(line: &str) -> io::Result<Option<SocketAddr>> {
        parse_v1(line.as_bytes())
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn v1_names_the_client_of_tcp_over_ipv4_and_ipv6() {
        assert_eq!(
            v1("PROXY TCP4 203.0.113.9 198.51.100.1 56324 443\r\n").unwrap(),
            addr("203.0.113.9:56324")
        );
        assert_eq!(
            v1("PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n").unwrap(),
            addr("[2001:db8::7]:4000")
        );
        assert_eq!(v1("PROXY UNKNOWN\r\n").unwrap(), None);
        assert_eq!(v1("PROXY UNKNOWN ff:: ff:: 1 2\r\n").unwrap(), None);
    }

    #[test]
    fn malformed_v1_headers_are_refused() {
        for bad in [
            "PROXY TCP4 203.0.113.9 198.51.100.1 56324 443\n",
            "PROXY TCP4 203.0.113.9 198.51.100.1 56324\r\n",
            "PROXY TCP4 2001:db8::7 198.51.100.1 56324 443\r\n",
            "PROXY TCP6 203.0.113.9 2001:db8::1 1 2\r\n",
            "PROXY TCP4 203.0.113.9 198.51.100.1 65536 443\r\n",
            "PROXY TCP4 203.0.113.9 198.51.100.1 +80 443\r\n",
            "PROXY TCP4 203.0.113.9 198.51.100.1 080 443\r\n",
            "PROXY TCP4  203.0.113.9 198.51.100.1 80 443\r\n",
            "PROXY UDP4 203.0.113.9 198.51.100.1 80 443\r\n",
            "proxy TCP4 203.0.113.9 198.51.100.1 80 443\r\n",
        ] {
            assert!(v1(bad).is_err(), "{bad:?}");
        }
    }

    fn v2_start(command: u8, family: u8, len: u16) -> [u8; 16] {
        let mut start = [0u8; 16];
        start[..12].copy_from_slice(&V2_SIGNATURE);
        start[12] = 0x20 | command;
        start[13] = family;
        start[14..].copy_from_slice(&len.to_be_bytes());
        start
    }

    #[test]
    fn v2_names_the_client_and_a_local_command_names_none() {
        let mut body = vec![203, 0, 113, 9, 127, 0, 0, 1];
        body.extend_from_slice(&5555u16.to_be_bytes());
        body.extend_from_slice(&8080u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0x00, 0x01, 0xff]); // a TLV, ignored
        assert_eq!(
            parse_v2(&v2_start(1, 0x11, body.len() as u16), &body).unwrap(),
            addr("203.0.113.9:5555")
        );
        let mut six = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        six.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        six.extend_from_slice(&[0x0f, 0xa0, 0x1f, 0x90]);
        assert_eq!(
            parse_v2(&v2_start(1, 0x21, 36), &six).unwrap(),
            addr("[2001:db8::7]:4000")
        );
        assert_eq!(parse_v2(&v2_start(0, 0x00, 0), &[]).unwrap(), None);
        assert_eq!(parse_v2(&v2_start(1, 0x31, 0), &[]).unwrap(), None);
        // Too short for its family, a wrong version, an unknown command.
        assert!(parse_v2(&v2_start(1, 0x11, 4), &body[..4]).is_err());
        let mut v3 = v2_start(1, 0x11, 12);
        v3[12] = 0x31;
        assert!(parse_v2(&v3, &body).is_err());
        assert!(parse_v2(&v2_start(2, 0x11, 12), &body).is_err());
    }

    #[tokio::test]
    async fn a_header_is_read_exactly_and_what_follows_is_left_alone() {
        let mut bytes =
            b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 8080\r\nGET / HTTP/1.1\r\n".to_vec();
        let mut stream = &bytes[..];
        assert_eq!(
            read_header(&mut stream).await.unwrap(),
            addr("203.0.113.9:5555")
        );
        assert_eq!(stream, b"GET / HTTP/1.1\r\n");

        let mut body = vec![198, 51, 100, 7, 127, 0, 0, 1, 0, 80, 0, 80];
        bytes = v2_start(1, 0x11, 12).to_vec();
        bytes.append(&mut body);
        bytes.extend_from_slice(b"GET /");
        let mut stream = &bytes[..];
        assert_eq!(
            read_header(&mut stream).await.unwrap(),
            addr("198.51.100.7:80")
        );
        assert_eq!(stream, b"GET /");

        for bad in [
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            format!("PROXY TCP4 {}\r\n", "1".repeat(120)).into_bytes(),
            [&v2_start(1, 0x11, 5000)[..], &[0u8; 64]].concat(),
        ] {
            let mut stream = &bad[..];
            assert!(read_header(&mut stream).await.is_err());
        }
    }
}
