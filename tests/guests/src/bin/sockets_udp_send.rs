//! Binds a UDP socket through wasi:sockets to send a datagram anywhere.
use sandgraph_hostile_guests::*;

struct Case;

use wasip2::sockets::instance_network::instance_network;
use wasip2::sockets::network::{IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
use wasip2::sockets::udp_create_socket::create_udp_socket;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("sockets_udp_send")
    }
    fn invoke(_input: String) -> Result<String, ToolError> {
        let denied = |e: String| ToolError::Denied(format!("sockets: 0.0.0.0:0: {e}"));
        let net = instance_network();
        let sock =
            create_udp_socket(IpAddressFamily::Ipv4).map_err(|e| denied(format!("{e:?}")))?;
        let any = IpSocketAddress::Ipv4(Ipv4SocketAddress {
            port: 0,
            address: (0, 0, 0, 0),
        });
        sock.start_bind(&net, any)
            .map_err(|e| denied(format!("{e:?}")))?;
        sock.subscribe().block();
        sock.finish_bind().map_err(|e| denied(format!("{e:?}")))?;
        Ok("{\"bound\":true}".into())
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
