//! Test support for the rooms that hold tracker sockets: a real loopback connection
//! whose server end is what a session holds. Never built outside tests.

use tokio::net::TcpStream;

/// A current-thread runtime with I/O and timers.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A connection: the server's end as a session holds it, the device's as a plain
/// blocking socket.
pub fn connection(rt: &tokio::runtime::Runtime) -> (TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let device = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    let server = rt.block_on(async { TcpStream::from_std(server) }).unwrap();
    (server, device)
}
