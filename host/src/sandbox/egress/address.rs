//! Which addresses egress may connect to, and which request authorities it accepts at all.
//! Every IPv6 form that carries an IPv4 address is judged by the address it carries, so a
//! resolver (or a URL) cannot reach 127.0.0.1 by spelling it as IPv6; unusual IPv4 spellings
//! (`0x7f.1`, `2130706433`, `0177.0.0.1`) and userinfo are refused before any lookup.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is not public, or `None` when it is.
pub fn non_public_reason(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4).map(str::to_string),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [169, 254, 169, 254] => "cloud metadata",
        [0, ..] => "unspecified / this-network",
        [127, ..] => "loopback",
        [10, ..] => "private",
        [172, b, ..] if (16..32).contains(&b) => "private",
        [192, 168, ..] => "private",
        [169, 254, ..] => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "carrier-grade NAT",
        [192, 0, 0, _] => "IETF protocol assignments",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [192, 88, 99, _] => "6to4 relay anycast",
        [198, 18..=19, ..] => "benchmarking",
        [a, ..] if (224..240).contains(&a) => "multicast",
        [a, ..] if a >= 240 => "reserved / broadcast",
        _ => return None,
    })
}

fn v4_from(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from(((hi as u32) << 16) | lo as u32)
}

/// The IPv4 address(es) an IPv6 transition form carries, with the form's name.
/// `always_refused` forms are never a destination of their own (the OS would connect to the
/// IPv4 address directly, or the embedding depends on the local network).
struct Embedded {
    form: &'static str,
    carried: Vec<Ipv4Addr>,
    always_refused: bool,
}

fn embedded_v4(ip: Ipv6Addr) -> Option<Embedded> {
    let s = ip.segments();
    let tail = v4_from(s[6], s[7]);
    let e = |form, carried, always_refused| {
        Some(Embedded {
            form,
            carried,
            always_refused,
        })
    };
    match s {
        // ::ffff:a.b.c.d (RFC 4291 IPv4-mapped)
        [0, 0, 0, 0, 0, 0xffff, ..] => e("IPv4-mapped IPv6", vec![tail], true),
        // ::ffff:0:a.b.c.d (RFC 2765 IPv4-translated)
        [0, 0, 0, 0, 0xffff, 0, ..] => e("IPv4-translated IPv6", vec![tail], true),
        // ::a.b.c.d (deprecated IPv4-compatible), excluding :: and ::1 handled by the caller
        [0, 0, 0, 0, 0, 0, ..] => e("IPv4-compatible IPv6", vec![tail], true),
        // 64:ff9b::/96 well-known NAT64 prefix: a real route to the carried IPv4 address.
        [0x64, 0xff9b, 0, 0, 0, 0, ..] => e("NAT64", vec![tail], false),
        // 64:ff9b:1::/48 local-use NAT64: where the address sits depends on the network.
        [0x64, 0xff9b, 1, ..] => e("local-use NAT64", vec![], true),
        // 64:ff9b::/32 outside the /96 is not assigned.
        [0x64, 0xff9b, ..] => e("NAT64 (unassigned part)", vec![], true),
        // 2002:AABB:CCDD::/48 6to4.
        [0x2002, hi, lo, ..] => e("6to4", vec![v4_from(hi, lo)], false),
        // 2001:0:SSSS:SSSS:flags:port:CCCC:CCCC Teredo: server, and client XOR ffff:ffff.
        [0x2001, 0, hi, lo, _, _, chi, clo] => {
            e("Teredo", vec![v4_from(hi, lo), v4_from(!chi, !clo)], false)
        }
        _ => None,
    }
}

fn v6_reason(ip: Ipv6Addr) -> Option<String> {
    if ip.is_unspecified() {
        return Some("unspecified".into());
    }
    if ip.is_loopback() {
        return Some("loopback".into());
    }
    if let Some(Embedded {
        form,
        carried,
        always_refused,
    }) = embedded_v4(ip)
    {
        let judged: Vec<String> = carried
            .iter()
            .map(|v4| match v4_reason(*v4) {
                Some(why) => format!("{v4}, {why}"),
                None => format!("{v4}, public"),
            })
            .collect();
        let any_private = carried.iter().any(|v4| v4_reason(*v4).is_some());
        if always_refused || any_private {
            return Some(if judged.is_empty() {
                form.to_string()
            } else {
                format!("{form} of {}", judged.join(" and "))
            });
        }
        return None;
    }
    let s = ip.segments();
    Some(
        match s[0] {
            0x2001 if s[1] == 0x0db8 => "documentation",
            0x2001 if s[1] == 2 && s[2] == 0 => "benchmarking",
            0x2001 if (0x10..0x30).contains(&s[1]) => "ORCHID",
            0x0100 if s[1..4] == [0, 0, 0] => "discard-only",
            x if x & 0xfe00 == 0xfc00 => "unique-local",
            x if x & 0xffc0 == 0xfe80 => "link-local",
            x if x & 0xffc0 == 0xfec0 => "site-local",
            x if x & 0xff00 == 0xff00 => "multicast",
            _ => return None,
        }
        .to_string(),
    )
}

/// Why a request authority's host is refused before any rule is consulted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityRefusal {
    #[error(
        "the authority `{authority}` carries userinfo (`…@`); credentials in URLs are refused, use egress `inject` for credentials"
    )]
    Userinfo { authority: String },
    #[error(
        "host `{host}` is an unusual spelling of an IPv4 address (octal, hex, short or integer form); write it as a dotted quad such as 127.0.0.1"
    )]
    OddIpv4 { host: String },
    #[error("host `{host}` is empty or not a host name or IP address")]
    BadHost { host: String },
}

/// Checks the authority of a request URI and returns its host, lower-cased and without the
/// brackets of an IPv6 literal or a trailing dot.
pub fn vet_authority(authority: &str, host: &str) -> Result<String, AuthorityRefusal> {
    if authority.contains('@') {
        return Err(AuthorityRefusal::Userinfo {
            authority: authority.to_string(),
        });
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let lower = bare.to_ascii_lowercase();
    if let Ok(ip) = lower.parse::<IpAddr>() {
        // Canonical text only: `::ffff:127.0.0.1` and `0:0::1` are all fine as parsed values.
        return Ok(ip.to_string());
    }
    if host.starts_with('[') {
        return Err(AuthorityRefusal::BadHost {
            host: host.to_string(),
        });
    }
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() {
        return Err(AuthorityRefusal::BadHost {
            host: host.to_string(),
        });
    }
    if looks_like_ipv4(name) {
        return Err(AuthorityRefusal::OddIpv4 {
            host: host.to_string(),
        });
    }
    let valid = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !valid || name.len() > 253 {
        return Err(AuthorityRefusal::BadHost {
            host: host.to_string(),
        });
    }
    Ok(name.to_string())
}

/// Would a URL parser or `inet_aton` read this host as an IPv4 address? (WHATWG: the last
/// label is a number — decimal, `0x` hex or octal.) A dotted quad has parsed before this.
fn looks_like_ipv4(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = |l: &str| {
        if let Some(hex) = l.strip_prefix("0x") {
            hex.bytes().all(|b| b.is_ascii_hexdigit())
        } else {
            !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())
        }
    };
    numeric(last) || name.split('.').all(numeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_public_addresses_name_their_class() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.5.4", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("0.0.0.0", "unspecified / this-network"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved / broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fd00::1", "unique-local"),
            ("fd00:ec2::254", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("100::1", "discard-only"),
            ("::ffff:10.0.0.1", "IPv4-mapped IPv6 of 10.0.0.1, private"),
            ("::ffff:8.8.8.8", "IPv4-mapped IPv6 of 8.8.8.8, public"),
            (
                "::ffff:0:7f00:1",
                "IPv4-translated IPv6 of 127.0.0.1, loopback",
            ),
            ("::127.0.0.1", "IPv4-compatible IPv6 of 127.0.0.1, loopback"),
            ("::8.8.8.8", "IPv4-compatible IPv6 of 8.8.8.8, public"),
            ("64:ff9b::a00:1", "NAT64 of 10.0.0.1, private"),
            ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1, loopback"),
            (
                "64:ff9b::a9fe:a9fe",
                "NAT64 of 169.254.169.254, cloud metadata",
            ),
            ("64:ff9b:1::7f00:1", "local-use NAT64"),
            ("64:ff9b:1:7f00:1::", "local-use NAT64"),
            ("2002:7f00:1::1", "6to4 of 127.0.0.1, loopback"),
            (
                "2002:a9fe:a9fe::",
                "6to4 of 169.254.169.254, cloud metadata",
            ),
            // Teredo: server 65.54.227.120 (public), client !(0x80ff:fffe) = 127.0.0.1.
            (
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                "Teredo of 65.54.227.120, public and 127.0.0.1, loopback",
            ),
            (
                "2001:0:a00:1::ffff:ffff",
                "Teredo of 10.0.0.1, private and 0.0.0.0, unspecified / this-network",
            ),
        ] {
            assert_eq!(
                non_public_reason(ip.parse().unwrap()).as_deref(),
                Some(why),
                "{ip}"
            );
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
            // A route to a public IPv4 address through a transition mechanism stays public.
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
        ] {
            assert_eq!(non_public_reason(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn authorities_with_userinfo_or_odd_ipv4_are_refused() {
        for (authority, host) in [
            ("name@127.0.0.1:8080", "127.0.0.1"),
            ("a:b@api.test", "api.test"),
            ("@api.test", "api.test"),
        ] {
            assert!(
                matches!(
                    vet_authority(authority, host),
                    Err(AuthorityRefusal::Userinfo { .. })
                ),
                "{authority}"
            );
        }
        for host in [
            "0x7f.1",
            "0x7f000001",
            "2130706433",
            "0177.0.0.1",
            "127.1",
            "127.0.1",
            "017700000001",
            "api.0x10",
            "1.2.3.4.5",
            "127.0.0.1.",
        ] {
            assert_eq!(
                vet_authority(host, host),
                Err(AuthorityRefusal::OddIpv4 { host: host.into() }),
                "{host}"
            );
        }
        for (host, canonical) in [
            ("API.Test", "api.test"),
            ("api.test.", "api.test"),
            ("127.0.0.1", "127.0.0.1"),
            ("[::1]", "::1"),
            ("[0:0::FFFF:7f00:1]", "::ffff:127.0.0.1"),
            ("1password.com", "1password.com"),
        ] {
            assert_eq!(
                vet_authority(host, host).as_deref(),
                Ok(canonical),
                "{host}"
            );
        }
        for host in ["", ".", "a..b", "[zz]"] {
            assert!(
                matches!(
                    vet_authority(host, host),
                    Err(AuthorityRefusal::BadHost { .. })
                ),
                "{host}"
            );
        }
    }
}
