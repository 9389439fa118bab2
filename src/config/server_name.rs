//! Matrix server names (`example.com`, `matrix.example.com:8448`, `[::1]:8448`), validated against
//! the grammar of the spec's appendix, so a typo is caught at start and not by a remote server.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The host part of a server name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Dns(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// A server name: host plus an optional explicit port, exactly as the admin wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerName {
    text: String,
    host: Host,
    port: Option<u16>,
}

impl ServerName {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (host_text, port_text) = split_host_port(text)?;
        let host = if let Some(inner) = host_text
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
        {
            let ip: Ipv6Addr = inner
                .parse()
                .map_err(|_| format!("`{inner}` in `{text}` is not an IPv6 address"))?;
            Host::V6(ip)
        } else if is_ipv4_shape(host_text) {
            let ip: Ipv4Addr = host_text
                .parse()
                .map_err(|_| format!("`{host_text}` in `{text}` is not an IPv4 address"))?;
            Host::V4(ip)
        } else {
            validate_dns_name(host_text, text)?;
            Host::Dns(host_text.to_owned())
        };
        let port = match port_text {
            None => None,
            Some(p) => {
                if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("port `{p}` in `{text}` must be 1 to 5 digits"));
                }
                let n: u32 = p.parse().map_err(|_| format!("bad port in `{text}`"))?;
                if n == 0 || n > 65535 {
                    return Err(format!("port {n} in `{text}` is outside 1-65535"));
                }
                Some(n as u16)
            }
        };
        Ok(ServerName {
            text: text.to_owned(),
            host,
            port,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The host as it appears in a certificate or SNI: a DNS name, or the IP address without brackets.
    pub fn host_str(&self) -> String {
        match &self.host {
            Host::Dns(name) => name.clone(),
            Host::V4(ip) => ip.to_string(),
            Host::V6(ip) => ip.to_string(),
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Dns(_) => None,
            Host::V4(ip) => Some(IpAddr::V4(ip)),
            Host::V6(ip) => Some(IpAddr::V6(ip)),
        }
    }

    /// True when a name contains upper-case letters, which the spec advises against: server names
    /// are case-sensitive in user IDs, while DNS is not.
    pub fn has_upper_case(&self) -> bool {
        matches!(&self.host, Host::Dns(n) if n.bytes().any(|b| b.is_ascii_uppercase()))
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if text.is_empty() {
        return Err("a server name cannot be empty".into());
    }
    if text.starts_with('[') {
        let close = text
            .find(']')
            .ok_or_else(|| format!("`{text}` opens `[` but never closes it"))?;
        let (host, rest) = text.split_at(close + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(format!("unexpected `{rest}` after `{host}` in `{text}`")),
            },
        };
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            if host.contains(':') {
                return Err(format!(
                    "`{text}` looks like an IPv6 address: write it in brackets, e.g. `[{text}]`"
                ));
            }
            Ok((host, Some(port)))
        }
        None => Ok((text, None)),
    }
}

/// The spec's IPv4address is `1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT`; anything of that
/// shape is treated as an address (and must then be a valid one), not as a DNS name.
fn is_ipv4_shape(host: &str) -> bool {
    let parts: Vec<&str> = host.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

fn validate_dns_name(host: &str, whole: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err(format!("`{whole}` has no host before the port"));
    }
    if host.len() > 255 {
        return Err(format!(
            "the host in `{whole}` is {} characters long; at most 255 are allowed",
            host.len()
        ));
    }
    if let Some(bad) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(format!(
            "`{bad}` is not allowed in the host `{host}`: a server name's host is letters, digits, `-` and `.`, an IPv4 address or a bracketed IPv6 address"
        ));
    }
    if host.starts_with('.') || host.ends_with('.') || host.contains("..") {
        return Err(format!("`{host}` has an empty DNS label"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        let n = ServerName::parse("example.com").unwrap();
        assert_eq!(n.host(), &Host::Dns("example.com".into()));
        assert_eq!(n.port(), None);
        let n = ServerName::parse("matrix.example.com:8448").unwrap();
        assert_eq!(n.port(), Some(8448));
        assert_eq!(n.host_str(), "matrix.example.com");
        let n = ServerName::parse("[::1]:8448").unwrap();
        assert_eq!(n.host(), &Host::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(n.host_str(), "::1");
        let n = ServerName::parse("1.2.3.4").unwrap();
        assert_eq!(n.ip(), Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4))));
        assert!(ServerName::parse("localhost").is_ok());
        assert!(ServerName::parse("Example.COM").unwrap().has_upper_case());
    }

    #[test]
    fn invalid_names() {
        for bad in [
            "",
            "example.com:",
            "example.com:0",
            "example.com:65536",
            "example.com:123456",
            "exa_mple.com",
            "https://example.com",
            "::1",
            "[::1",
            "[zz]:80",
            "999.1.1.1",
            "example..com",
            ".example.com",
            "example.com/path",
            ":8448",
        ] {
            assert!(ServerName::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
