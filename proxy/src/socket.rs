//! Accepted sockets that join the reactor only when they first have to wait.
//!
//! tokio registers every socket with epoll when it is accepted and deregisters it when
//! it is dropped: two `epoll_ctl` calls per connection, each an allocation, a red-black
//! tree update and a wait-queue hook in the kernel. A client that connects, sends its
//! request and waits usually has the request in the socket by the time the worker gets
//! to it, the response fits in the send buffer, and with `Connection: close` the
//! connection ends without ever waiting on its own socket. HAProxy does the same
//! ("speculative I/O"): read and write first, subscribe to readiness on `EAGAIN`.
//!
//! [`Socket`] is the accepted socket in either state: fresh (a plain non-blocking
//! socket, never registered) or registered (a tokio `TcpStream`). The first read or
//! write that would block, or a wait for readiness, registers it; from then on it is
//! tokio's stream. [`Listener`] accepts without registering (`accept4` with
//! `SOCK_NONBLOCK`, as tokio's own listener, minus the registration).
//!
//! What keeps a quick exchange out of the reactor is that nothing waits on the
//! socket while the upstream answers: the HTTP/1.1 server watches a fresh socket's
//! client for leaving only once the exchange has taken half a second
//! (`h1_server::SPECULATIVE_WATCH`). With `Connection: close` that leaves the
//! system calls of HAProxy's (`strace -c`): two `epoll_ctl` per connection fewer.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A fresh socket reads at most this much at a time, into the worker's scratch
/// buffer, and copies what came into the caller's buffer: safe code may not read
/// into uninitialised memory (tokio's own stream does), and zeroing the caller's
/// buffer for each read cost more than the copy of a request head. A head usually
/// fits; a larger one takes another read.
const FRESH_READ: usize = 4 * 1024;

thread_local! {
    static SCRATCH: RefCell<[u8; FRESH_READ]> = const { RefCell::new([0; FRESH_READ]) };
}

/// A listening socket whose accepted connections are not registered with the reactor.
pub struct Listener {
    fd: AsyncFd<mio::net::TcpListener>,
}

impl Listener {
    /// Registers a non-blocking listening socket with this thread's reactor.
    pub fn new(listener: std::net::TcpListener) -> io::Result<Listener> {
        let listener = mio::net::TcpListener::from_std(listener);
        // tokio 1.54 deprecates the safe constructor for types whose `as_raw_fd` could
        // change or close under it (its replacement is `unsafe`, which this crate
        // forbids). A mio listener owns its descriptor and always returns that one,
        // so the condition the new constructor asks the caller to promise holds here.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(listener, tokio::io::Interest::READABLE)?;
        Ok(Listener { fd })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.fd.get_ref().local_addr()
    }

    /// The next connection, non-blocking and not registered.
    pub async fn accept(&self) -> io::Result<(Socket, SocketAddr)> {
        loop {
            let mut ready = self.fd.readable().await?;
            // `Err`: the listener would block; its readiness is cleared, wait again.
            if let Ok(accepted) = ready.try_io(|l| l.get_ref().accept()) {
                let (stream, peer) = accepted?;
                return Ok((
                    Socket {
                        state: State::Fresh(stream.into()),
                    },
                    peer,
                ));
            }
        }
    }
}

/// An accepted connection's socket: see the module documentation.
pub struct Socket {
    state: State,
}

enum State {
    /// Non-blocking, not registered with the reactor.
    Fresh(std::net::TcpStream),
    Registered(tokio::net::TcpStream),
    /// Registration failed; the error was returned once, every call fails after.
    Failed,
}

impl Socket {
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match &self.state {
            State::Fresh(s) => s.set_nodelay(nodelay),
            State::Registered(s) => s.set_nodelay(nodelay),
            State::Failed => Err(failed()),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.state {
            State::Fresh(s) => s.local_addr(),
            State::Registered(s) => s.local_addr(),
            State::Failed => Err(failed()),
        }
    }

    /// Whether the socket has not joined the reactor: every read and write so far
    /// went through at once.
    pub fn is_fresh(&self) -> bool {
        matches!(self.state, State::Fresh(_))
    }

    /// The registered stream, registering a fresh socket first.
    fn registered(&mut self) -> io::Result<&mut tokio::net::TcpStream> {
        if let State::Fresh(_) = self.state {
            let State::Fresh(stream) = std::mem::replace(&mut self.state, State::Failed) else {
                unreachable!("checked above");
            };
            self.state = State::Registered(tokio::net::TcpStream::from_std(stream)?);
        }
        match &mut self.state {
            State::Registered(stream) => Ok(stream),
            _ => Err(failed()),
        }
    }

    /// Waits until the socket is readable (or has an error, or EOF), without reading.
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.registered() {
            Ok(stream) => stream.poll_read_ready(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.state {
            State::Fresh(s) => s.write(buf),
            State::Registered(s) => s.try_write(buf),
            State::Failed => Err(failed()),
        }
    }

    /// Runs `op` on the fresh socket: `None` when the socket is (now) registered, as
    /// `op` would have blocked, and the caller goes on with tokio's stream.
    fn fresh<T>(
        &mut self,
        mut op: impl FnMut(&mut std::net::TcpStream) -> io::Result<T>,
    ) -> Option<io::Result<T>> {
        let State::Fresh(stream) = &mut self.state else {
            return None;
        };
        loop {
            match op(stream) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return self.registered().err().map(Err);
                }
                done => return Some(done),
            }
        }
    }
}

fn failed() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "socket could not join the reactor",
    )
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Registered (the usual case after a connection's first wait): tokio's, as is.
        if let State::Registered(stream) = &mut this.state {
            return Pin::new(stream).poll_read(cx, buf);
        }
        let n = buf.remaining().min(FRESH_READ);
        let read = SCRATCH.with_borrow_mut(|scratch| {
            let read = this.fresh(|s| s.read(&mut scratch[..n]))?;
            Some(read.map(|read| buf.put_slice(&scratch[..read])))
        });
        match read {
            Some(Ok(())) => Poll::Ready(Ok(())),
            Some(Err(e)) => Poll::Ready(Err(e)),
            None => match this.registered() {
                Ok(stream) => Pin::new(stream).poll_read(cx, buf),
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let State::Registered(stream) = &mut this.state {
            return Pin::new(stream).poll_write(cx, buf);
        }
        if let Some(done) = this.fresh(|s| s.write(buf)) {
            return Poll::Ready(done);
        }
        match this.registered() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let State::Registered(stream) = &mut this.state {
            return Pin::new(stream).poll_write_vectored(cx, bufs);
        }
        if let Some(done) = this.fresh(|s| s.write_vectored(bufs)) {
            return Poll::Ready(done);
        }
        match this.registered() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &mut this.state {
            State::Fresh(s) => Poll::Ready(s.shutdown(Shutdown::Write)),
            State::Registered(s) => Pin::new(s).poll_shutdown(cx),
            State::Failed => Poll::Ready(Err(failed())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn listener() -> (Listener, SocketAddr) {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let addr = std.local_addr().unwrap();
        (Listener::new(std).unwrap(), addr)
    }

    #[tokio::test]
    async fn a_request_already_there_is_answered_without_joining_the_reactor() {
        let (listener, addr) = listener();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.write_all(b"ping").unwrap();
        // Loopback delivers in the writer's system call; the pause only makes sure.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (mut socket, peer) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(socket.local_addr().unwrap(), addr);
        let mut buf = [0u8; 16];
        let n = socket.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        socket.write_all(b"pong").await.unwrap();
        socket.shutdown().await.unwrap();
        assert!(socket.is_fresh(), "no wait, so no registration");
        drop(socket);
        let mut answer = Vec::new();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"pong");
    }

    #[tokio::test]
    async fn a_read_that_would_block_joins_the_reactor_and_wakes_on_data() {
        let (listener, addr) = listener();
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (mut socket, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            client.write_all(b"late").unwrap();
            client
        });
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
            .await
            .expect("woken by the data")
            .unwrap();
        assert_eq!(&buf[..n], b"late");
        assert!(!socket.is_fresh());
        // The registered path writes and ends as the fresh one does.
        socket.write_all(b"ok").await.unwrap();
        socket.shutdown().await.unwrap();
        let mut client = writer.join().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"ok");
    }

    #[tokio::test]
    async fn waiting_for_readiness_registers_and_sees_eof() {
        let (listener, addr) = listener();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (mut socket, _) = listener.accept().await.unwrap();
        drop(client);
        tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| socket.poll_read_ready(cx)),
        )
        .await
        .expect("EOF is readiness")
        .unwrap();
        assert!(!socket.is_fresh());
        assert_eq!(socket.read(&mut [0u8; 4]).await.unwrap(), 0);
    }
}
