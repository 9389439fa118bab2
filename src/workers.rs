//! Workers: the threads that serve connections, one single-threaded runtime each.
//!
//! Every listener is accepted on by every worker, and a connection stays on the worker that
//! accepted it for its whole life, together with the backend connections it uses (the pool is
//! kept per worker). A request therefore never wakes another thread: no cross-core hand-off of
//! tasks, no futex round trips, no cache lines bouncing between cores on the hot path.
//!
//! Owns the threads and their runtimes and nothing about what runs on them. The control plane
//! (signals, reloads, ACME, the admin listener) stays on the runtime that called `run`.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    /// 1-based index of the worker this thread is; 0 on any other thread.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker the calling thread is, 1-based; 0 when called from outside the workers (the
/// control plane, tests).
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Running worker threads. Dropping it stops them: whatever still runs on them is cancelled, so
/// drain connections first.
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Workers {
    /// Starts `count` workers (at least one).
    pub fn start(count: usize) -> io::Result<Self> {
        let (stop, _) = watch::channel(false);
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 1..=count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stop.subscribe();
            let thread = std::thread::Builder::new()
                .name(format!("matrix-edge-worker-{index}"))
                .spawn(move || {
                    INDEX.with(|i| i.set(index));
                    runtime.block_on(async {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    });
                })?;
            threads.push(thread);
        }
        Ok(Workers {
            handles,
            threads,
            stop,
        })
    }

    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Runs one copy of a task on every worker: `make(i)` builds the copy for worker `i`
    /// (0-based), on the caller's thread.
    pub fn spawn_each<F, Fut>(&self, mut make: F)
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        for (i, handle) in self.handles.iter().enumerate() {
            handle.spawn(make(i));
        }
    }

    /// Stops every worker and waits for its thread to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_runs_its_copy_on_its_own_thread() {
        let workers = Workers::start(3).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        workers.spawn_each(|i| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((i, current(), std::thread::current().id()));
            }
        });
        let mut seen: Vec<_> = (0..3)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap())
            .collect();
        seen.sort_by_key(|s| s.0);
        assert_eq!(
            seen.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
            [(0, 1), (1, 2), (2, 3)]
        );
        assert_ne!(seen[0].2, seen[1].2);
        assert_eq!(current(), 0);
        workers.stop();
    }
}
