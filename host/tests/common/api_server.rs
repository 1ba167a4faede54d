//! `sandgraph serve` in the test process, on a runtime of its own so the tests' blocking HTTP
//! clients never stall it; dropped or shut down, it stops gracefully and waits for the end.

use std::net::SocketAddr;
use std::time::Duration;

use sandgraph::api::{self, Config};

pub struct ApiServer {
    pub addr: SocketAddr,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Starts the API with `config` and waits (up to a minute) for its address.
    pub fn start(config: Config) -> ApiServer {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let running = api::start(config).await.expect("server starts");
                addr_tx.send(running.addr).unwrap();
                tokio::task::spawn_blocking(move || {
                    let _ = stop_rx.recv();
                })
                .await
                .unwrap();
                running.shutdown().await;
            });
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server address");
        ApiServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Graceful shutdown, returning once the server (and its trace export) has stopped.
    pub fn shutdown(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
