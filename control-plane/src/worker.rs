//! A long-lived thread for the control plane's large blocking jobs: reading the
//! configuration directory, compiling. One thread per kind of job keeps its allocator heap
//! warm from one job to the next: on a fresh blocking thread, or after handing memory back
//! right after each job, a compile of 10 000 routes spent about a third of its time
//! faulting in and zeroing pages (`perf`: `clear_page_erms`), on the way from a change to
//! traffic. Memory is handed back once the worker has been quiet for [`QUIET`] instead.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::Duration;

/// How long a worker waits for the next job before it hands back what it freed.
pub const QUIET: Duration = Duration::from_millis(500);

type Job = Box<dyn FnOnce() + Send>;

/// Runs jobs one after the other on its own thread.
pub struct Worker {
    jobs: mpsc::Sender<Job>,
}

/// The job panicked (or the worker is gone): it gave no result.
#[derive(Debug, thiserror::Error)]
#[error("the {0} job failed")]
pub struct JobFailed(&'static str);

impl Worker {
    /// Starts the thread `name`; it ends when the worker is dropped.
    pub fn spawn(name: &'static str) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut worked = false;
                loop {
                    let next = if worked {
                        queue.recv_timeout(QUIET)
                    } else {
                        queue
                            .recv()
                            .map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                    };
                    match next {
                        Ok(job) => {
                            job();
                            worked = true;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            pavilion_telemetry::release_free_memory();
                            worked = false;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .expect("the system can start a thread");
        Self { jobs }
    }

    /// Runs `job` on the worker's thread once the jobs before it are done.
    pub async fn run<T: Send + 'static>(
        &self,
        name: &'static str,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, JobFailed> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic ends the job, not the worker; its result never comes.
            if let Ok(value) = std::panic::catch_unwind(AssertUnwindSafe(job)) {
                let _ = done.send(value);
            }
        });
        self.jobs.send(job).map_err(|_| JobFailed(name))?;
        result.await.map_err(|_| JobFailed(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_on_one_thread_and_a_panic_fails_only_its_job() {
        let worker = Worker::spawn("test-worker");
        let first = worker
            .run("first", || std::thread::current().id())
            .await
            .unwrap();
        assert!(worker.run("panics", || panic!("boom")).await.is_err());
        let second = worker
            .run("second", || std::thread::current().id())
            .await
            .unwrap();
        assert_eq!(first, second, "the same thread, still alive");
        assert_ne!(first, std::thread::current().id());
    }
}
