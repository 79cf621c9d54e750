//! The storage conformance suite (`dsf_fhir::store::conformance`) on both backends, and on a
//! backend written outside dsf-fhir against its public traits.

use dsf_fhir::store::{async_trait, conformance, Backend, Dialect, ResourceStore, Session};
use dsf_tests::backend;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A backend of the kind an integrator writes: it wraps another and counts the sessions it
/// hands out (for a metrics endpoint, say). Only public items of dsf-fhir are used.
struct CountingBackend {
    inner: Arc<dyn Backend>,
    sessions: Arc<AtomicUsize>,
}

#[async_trait]
impl Backend for CountingBackend {
    fn dialect(&self) -> Dialect {
        self.inner.dialect()
    }

    fn single_writer(&self) -> bool {
        self.inner.single_writer()
    }

    async fn read(&self) -> dsf_fhir::Result<Box<dyn Session>> {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.inner.read().await
    }

    async fn write(&self) -> dsf_fhir::Result<Box<dyn Session>> {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.inner.write().await
    }
}

fn main() {
    let mut suite = dsf_tests::Suite::new();
    for case in conformance::cases() {
        suite = suite.on_both_backends(case.name, move |kind| async move {
            (case.run)(ResourceStore::new(
                backend(kind).await,
                conformance::BASE_URL,
            ))
            .await
        });
        let name = format!("{}_on_an_outside_backend", case.name);
        suite = suite.on_both_backends(&name, move |kind| async move {
            let sessions = Arc::new(AtomicUsize::new(0));
            let outside = CountingBackend {
                inner: backend(kind).await,
                sessions: sessions.clone(),
            };
            (case.run)(ResourceStore::new(Arc::new(outside), conformance::BASE_URL)).await;
            assert!(
                sessions.load(Ordering::Relaxed) > 0,
                "the store did not go through the outside backend"
            );
        });
    }
    suite.run()
}
