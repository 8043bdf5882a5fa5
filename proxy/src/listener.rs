//! Listening sockets: one `SO_REUSEPORT` socket per worker per address, so the kernel
//! spreads connections over workers with no accept lock and no hand-off.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// The sockets bound for one configured address.
pub struct Bound {
    /// The address actually bound (differs from the configured one for port 0).
    pub actual: SocketAddr,
    pub per_worker: Vec<std::net::TcpListener>,
}

/// Binds `workers` sockets on `addr`. With port 0, the first socket picks the port and
/// the others join it.
pub fn bind(addr: SocketAddr, workers: usize) -> std::io::Result<Bound> {
    let first = bind_one(addr)?;
    let actual = first.local_addr()?;
    let mut per_worker = vec![first];
    for _ in 1..workers {
        per_worker.push(bind_one(actual)?);
    }
    Ok(Bound { actual, per_worker })
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}
