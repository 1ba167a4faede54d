//! Opens a raw TCP connection to input `addr` through wasi:sockets.
use sandgraph_hostile_guests::*;

struct Case;

use wasip2::sockets::instance_network::instance_network;
use wasip2::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
use wasip2::sockets::tcp_create_socket::create_tcp_socket;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("sockets_tcp_connect")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let addr = field(&input, "addr").ok_or(ToolError::InvalidInput("need addr".into()))?;
        let sa: std::net::SocketAddrV4 = addr
            .parse()
            .map_err(|_| ToolError::InvalidInput("addr".into()))?;
        let o = sa.ip().octets();
        let denied = |e: String| ToolError::Denied(format!("sockets: {addr}: {e}"));
        let net = instance_network();
        let sock =
            create_tcp_socket(IpAddressFamily::Ipv4).map_err(|e| denied(format!("{e:?}")))?;
        let target = IpSocketAddress::Ipv4(Ipv4SocketAddress {
            port: sa.port(),
            address: (o[0], o[1], o[2], o[3]),
        });
        sock.start_connect(&net, target)
            .map_err(|e| denied(format!("{e:?}")))?;
        sock.subscribe().block();
        sock.finish_connect()
            .map_err(|e| denied(format!("{e:?}")))?;
        Ok("{\"connected\":true}".into())
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
