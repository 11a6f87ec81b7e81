//! The accept loop the hand-written loopback servers share: a thread
//! taking connections on 127.0.0.1 until the [`Acceptor`] is dropped.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

/// A listening socket on 127.0.0.1 (port chosen by the OS) whose thread
/// hands each connection to a handler; dropping it stops the loop.
pub struct Acceptor {
    /// The port it listens on.
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl Acceptor {
    /// Starts accepting. The handler runs on the accept thread (spawn from
    /// it to serve connections at once) and gets the stop flag, set when
    /// the acceptor is dropped, for connections it holds open.
    pub fn start(
        what: &str,
        handle: impl Fn(TcpStream, &Arc<AtomicBool>) + Send + 'static,
    ) -> Acceptor {
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind the {what}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                match conn {
                    Ok(conn) => handle(conn, &flag),
                    Err(_) => break,
                }
            }
        });
        Acceptor { port, stop }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
