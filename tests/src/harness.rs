//! The test runner of the integration suites (libtest-mimic): the same command-line options
//! and output as `cargo test`'s own harness, but whether the PostgreSQL tests run is decided
//! when the suite starts. Without a reachable server they are reported as *ignored*, with the
//! reason printed once, instead of passing without having run; under `CI=true` they run and
//! fail.

use crate::{postgres_url, BackendKind};
use libtest_mimic::{Arguments, Trial};
use std::future::Future;
use std::time::Duration;

/// Whether PostgreSQL tests can run here: `Err` with the reason when they cannot.
fn postgres_availability() -> Result<(), String> {
    if std::env::var("CI").as_deref() == Ok("true") {
        // Under CI they must run, and fail if the server is missing.
        return Ok(());
    }
    let url = postgres_url();
    let runtime = runtime(1);
    runtime.block_on(async {
        match tokio::time::timeout(
            Duration::from_secs(5),
            tokio_postgres::connect(&url, tokio_postgres::NoTls),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("PostgreSQL at {url} unreachable: {e}")),
            Err(_) => Err(format!("PostgreSQL at {url} did not answer within 5 s")),
        }
    })
}

fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The trials of one test binary.
pub struct Suite {
    trials: Vec<Trial>,
    postgres: Result<(), String>,
}

impl Default for Suite {
    fn default() -> Self {
        Self::new()
    }
}

impl Suite {
    /// A suite with no trials, PostgreSQL's availability checked once.
    pub fn new() -> Self {
        Suite {
            trials: Vec::new(),
            postgres: postgres_availability(),
        }
    }

    fn trial<Fut>(name: String, test: impl FnOnce() -> Fut + Send + 'static) -> Trial
    where
        Fut: Future<Output = ()>,
    {
        // libtest-mimic turns a panic into a failure of this trial alone.
        Trial::test(name, move || {
            runtime(2).block_on(test());
            Ok(())
        })
    }

    /// An async test on a two-worker runtime.
    pub fn test<Fut>(mut self, name: &str, test: impl FnOnce() -> Fut + Send + 'static) -> Self
    where
        Fut: Future<Output = ()>,
    {
        self.trials.push(Self::trial(name.to_owned(), test));
        self
    }

    /// An async test that needs PostgreSQL.
    pub fn postgres_test<Fut>(
        mut self,
        name: &str,
        test: impl FnOnce() -> Fut + Send + 'static,
    ) -> Self
    where
        Fut: Future<Output = ()>,
    {
        let trial = Self::trial(name.to_owned(), test).with_ignored_flag(self.postgres.is_err());
        self.trials.push(trial);
        self
    }

    /// An async test run once per backend, as `sqlite::name` and `postgres::name`.
    pub fn on_both_backends<Fut>(
        mut self,
        name: &str,
        test: impl Fn(BackendKind) -> Fut + Send + Clone + 'static,
    ) -> Self
    where
        Fut: Future<Output = ()>,
    {
        let sqlite = test.clone();
        self.trials
            .push(Self::trial(format!("sqlite::{name}"), move || {
                sqlite(BackendKind::Sqlite)
            }));
        let trial = Self::trial(format!("postgres::{name}"), move || {
            test(BackendKind::Postgres)
        })
        .with_ignored_flag(self.postgres.is_err());
        self.trials.push(trial);
        self
    }

    /// A plain test.
    pub fn sync_test(mut self, name: &str, test: fn()) -> Self {
        self.trials.push(Trial::test(name, move || {
            test();
            Ok(())
        }));
        self
    }

    /// Runs the trials selected on the command line and exits with the harness's status.
    pub fn run(self) -> ! {
        let arguments = Arguments::from_args();
        if let Err(reason) = &self.postgres {
            eprintln!("PostgreSQL tests ignored: {reason}");
        }
        libtest_mimic::run(&arguments, self.trials).exit()
    }
}

/// Adds each named `async fn(TestServer)` to a [`Suite`], once per backend.
#[macro_export]
macro_rules! server_tests {
    ($suite:expr, $($name:ident),* $(,)?) => {
        $suite$(.on_both_backends(stringify!($name), |kind| async move {
            $name($crate::TestServer::start(kind).await).await
        }))*
    };
}

/// Adds each named `async fn()` to a [`Suite`].
#[macro_export]
macro_rules! async_tests {
    ($suite:expr, $($name:ident),* $(,)?) => {
        $suite$(.test(stringify!($name), $name))*
    };
}
