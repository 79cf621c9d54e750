//! Events reaching the BPE and what it does with them: a requested Task starts or continues an
//! instance (claimed first, so two BPEs never both run it), a completed QuestionnaireResponse
//! completes a user task, a due timer fires. After each, the instance runs until it waits or
//! ends, its state is saved, and the Tasks it is done with are completed or failed.

use crate::deploy::{process_key, Deployment, ProcessState};
use crate::locks::{KeyGuard, KeyLocks};
use crate::services::Services;
use crate::state::Lease;
use crate::status::BpeStatus;
use crate::Error;
use dsf_bpmn::engine::{Instance, InstanceState, Step};
use dsf_core::ErrorChain;
use dsf_fhir::client::SubscriptionSettings;
use dsf_fhir::Error as FhirError;
use dsf_fhir::FhirClient;
use dsf_plugin_api::constants::{
    BPMN_MESSAGE, BUSINESS_KEY, ERROR, QUESTIONNAIRE_RESPONSE, RECEIVED_TASKS, START_TASK,
};
use dsf_plugin_api::task::{add_output, business_key, correlation_key, message_name, parameter};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify, Semaphore};

/// The deployed processes and what runs them: where events reaching the BPE are handled.
pub(crate) struct Dispatcher {
    pub services: Arc<Services>,
    /// By `(process id, version)`.
    pub deployments: HashMap<(String, String), Arc<Deployment>>,
    pub locks: KeyLocks,
    pub timers: Notify,
    pub status: watch::Sender<BpeStatus>,
    pub work: Arc<Semaphore>,
    /// Work started from the loops; aborted when the BPE stops.
    pub running: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

impl Dispatcher {
    pub(crate) fn deployment(&self, key: &str) -> Option<&Arc<Deployment>> {
        let (id, version) = key.split_once('|')?;
        self.deployments.get(&(id.to_owned(), version.to_owned()))
    }

    pub(crate) fn local(&self) -> &FhirClient {
        self.services.api.local_client()
    }

    /// Runs `work` on a task of its own that stops with the BPE.
    pub(crate) fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        while running.try_join_next().is_some() {}
        running.spawn(work);
    }

    /// Follows the Subscription with `criteria` for as long as the BPE runs: every (re)connect
    /// catches up over REST from the last event time stored under `kind`; each event is
    /// handled on a task of its own, so the reader never waits for process code.
    pub(crate) async fn follow(
        self: Arc<Self>,
        criteria: &'static str,
        kind: &'static str,
        settings: SubscriptionSettings,
    ) {
        let tasks = kind == "task";
        loop {
            let id = match self.local().find_subscription(criteria).await {
                Ok(id) => id,
                Err(error) => {
                    tracing::warn!(%criteria, error = %ErrorChain(&error), "no subscription to bind to yet");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            let since = self.services.state.last_event(kind).await.ok().flatten();
            let mut stream = match self.local().subscribe(&id, since, settings.clone()).await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%criteria, error = %ErrorChain(&error), "cannot subscribe");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            let mut seen_connects = 0;
            loop {
                let notification = tokio::select! {
                    n = stream.next() => n,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        let s = stream.status();
                        let connected = s.connected && s.catch_ups >= s.connects && s.connects > 0;
                        let fresh = s.connects.saturating_sub(seen_connects);
                        seen_connects = s.connects;
                        self.status.send_if_modified(|status| {
                            let flag = if tasks { &mut status.tasks_connected } else { &mut status.questionnaire_responses_connected };
                            let changed = *flag != connected || fresh > 0;
                            *flag = connected;
                            status.connects += fresh;
                            changed
                        });
                        continue;
                    }
                };
                let Some(notification) = notification else {
                    break;
                };
                let Ok(permit) = self.work.clone().acquire_owned().await else {
                    return;
                };
                let dispatcher = self.clone();
                self.spawn(async move {
                    if tasks {
                        dispatcher.on_task(notification.resource).await;
                        dispatcher.status.send_modify(|s| s.tasks_handled += 1);
                    } else {
                        dispatcher
                            .on_questionnaire_response(notification.resource)
                            .await;
                    }
                    if let Some(at) = notification.last_updated {
                        if let Err(error) = dispatcher.services.state.set_last_event(kind, at).await
                        {
                            tracing::warn!(error = %ErrorChain(&error), "cannot store the last event time");
                        }
                    }
                    drop(permit);
                });
            }
        }
    }

    /// Runs instances whose timers or jobs are due, sleeping until the next one (or until an
    /// instance is saved with a new due time).
    pub(crate) async fn clock(self: Arc<Self>) {
        loop {
            let now = dsf_fhir::date::unix_millis_now();
            let (due, next) = match self.services.state.due(now).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::error!(error = %ErrorChain(&error), "cannot read due timers");
                    (Vec::new(), Some(now + 1000))
                }
            };
            let mut running = tokio::task::JoinSet::new();
            for id in due {
                let Ok(permit) = self.work.clone().acquire_owned().await else {
                    return;
                };
                let dispatcher = self.clone();
                running.spawn(async move {
                    dispatcher.run_instance(&id).await;
                    drop(permit);
                });
            }
            while running.join_next().await.is_some() {}
            // Other BPEs sharing the state database set timers this one is not told of: it
            // looks again at least once per lease renewal.
            let longest = i64::try_from(self.renewal_interval().as_millis()).unwrap_or(1000);
            let wait = next.map_or(longest, |n| {
                (n - dsf_fhir::date::unix_millis_now()).clamp(10, longest)
            });
            tokio::select! {
                _ = self.timers.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            }
        }
    }

    /// Loads, locks and runs one instance (a timer or job of it is due).
    pub(crate) async fn run_instance(self: &Arc<Self>, id: &str) {
        let Some((guard, instance, deployment)) = self.lock_instance(id).await else {
            return;
        };
        if instance.is_finished() {
            return;
        }
        self.drive(&deployment, instance, None, guard.lease()).await;
    }

    /// Instance `id` under the lock of its business key, as stored once the lock is held
    /// (read once to learn the key, again under the lock), with its deployment.
    async fn lock_instance(
        self: &Arc<Self>,
        id: &str,
    ) -> Option<(KeyGuard<'_>, Instance, Arc<Deployment>)> {
        let stored = self.services.state.load(id).await.ok()??;
        let key = stored
            .instance
            .business_key
            .clone()
            .unwrap_or_else(|| id.to_owned());
        let guard = match self.locks.lock(&key, &self.services.state).await {
            Ok(guard) => guard,
            Err(error) => {
                tracing::error!(instance = %id, error = %ErrorChain(&error), "cannot lease the instance's business key");
                return None;
            }
        };
        let mut stored = self.services.state.load(id).await.ok()??;
        let Some(deployment) = self.deployment(&stored.deployment).cloned() else {
            tracing::warn!(instance = %id, deployment = %stored.deployment, "instance of a process no longer deployed");
            return None;
        };
        if stored.interrupted {
            // A run cut short goes on first (see `settled_instances`).
            self.drive(&deployment, stored.instance, None, guard.lease())
                .await;
            stored = self.services.state.load(id).await.ok()??;
        }
        Some((guard, stored.instance, deployment))
    }

    /// A Task from the subscription or a catch-up search.
    pub(crate) async fn on_task(self: &Arc<Self>, mut task: Value) {
        let Some(id) = task["id"].as_str().map(str::to_owned) else {
            return;
        };
        if task["status"].as_str() != Some("requested") {
            return;
        }
        let version = version_of(&task);
        let canonical = task["instantiatesCanonical"].as_str().unwrap_or_default();
        let Some(deployment) = self.deployment_of(&task) else {
            let reason = format!("Process not found: no process {canonical} is deployed");
            self.fail_task(task, version, &reason).await;
            return;
        };
        if message_name(&task).is_none() {
            self.fail_task(task, version, "Task has no input bpmn-message|message-name")
                .await;
            return;
        }
        // A Task without a business key gets one with the claim (the one input change the
        // server allows).
        if business_key(&task).is_none() {
            let key = uuid::Uuid::new_v4().to_string();
            let input = parameter(BPMN_MESSAGE, BUSINESS_KEY, "valueString", json!(key));
            match task.get_mut("input").and_then(Value::as_array_mut) {
                Some(inputs) => inputs.push(input),
                None => task["input"] = json!([input]),
            }
        }
        // Recorded first: a BPE stopped right after the claim finds the Task again. Of BPEs
        // sharing the state database (and of this BPE's sightings of it), the first to
        // record it handles it.
        match self.services.state.claim(&id, &task).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(task = %id, "Task claimed by another BPE of this organisation");
                return;
            }
            Err(error) => {
                tracing::error!(task = %id, error = %ErrorChain(&error), "cannot record the claim; leaving the Task requested");
                return;
            }
        }
        self.services.step_boundary("claim-recorded").await;
        self.claim_on_server(task, version, &deployment).await;
    }

    /// Sets a Task this BPE claimed in its state in progress on the server (if nobody changed
    /// it since `version`), and goes on with it.
    async fn claim_on_server(
        self: &Arc<Self>,
        mut task: Value,
        version: Option<i64>,
        deployment: &Arc<Deployment>,
    ) {
        let id = task["id"].as_str().unwrap_or_default().to_owned();
        task["status"] = json!("in-progress");
        let mut version = version;
        let mut attempt = 0;
        let claimed: Value = loop {
            let error = match self.local().update_if_match(&task, version).await {
                Ok(claimed) => break claimed,
                Err(error) => error,
            };
            match self.claim_outcome(&id, error).await {
                ClaimOutcome::Claimed(claimed) => break claimed,
                ClaimOutcome::Unknown(current) if attempt < CLAIM_ATTEMPTS => {
                    // The server was not reached, or is being replaced: try again shortly
                    // (nobody else will, the claim being this BPE's).
                    version = current.or(version);
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    attempt += 1;
                }
                ClaimOutcome::Unknown(_) => {
                    tracing::warn!(task = %id, "cannot set the Task in progress; it stays requested until the next catch-up");
                    let _ = self.services.state.forget_claim(&id).await;
                    return;
                }
                ClaimOutcome::Lost => return,
            }
        };
        let _ = self.services.state.record_claimed(&id, &claimed).await;
        self.services.metrics.task_claimed(&deployment.key());
        self.services.step_boundary("claimed").await;
        self.continue_claimed(deployment, claimed).await;
    }

    /// What became of a claim whose request failed. Refused by the server (the Task changed,
    /// or it is not allowed), the claim is withdrawn. Without an answer, the write may have
    /// reached the server all the same (its answer lost with a connection): in progress now,
    /// it is this BPE's own write, since no other BPE sharing the state database holds the
    /// claim; still requested, it is tried again.
    async fn claim_outcome(&self, id: &str, error: FhirError) -> ClaimOutcome {
        if matches!(
            error,
            FhirError::PreconditionFailed(_) | FhirError::VersionConflict(_)
        ) {
            // A definite answer (conditional writes are not retried): the Task changed since
            // this BPE read it, e.g. a BPE with a state database of its own claimed it.
            tracing::info!(task = %id, "Task changed on the server before the claim");
            let _ = self.services.state.forget_claim(id).await;
            return ClaimOutcome::Lost;
        }
        tracing::warn!(task = %id, error = %ErrorChain(&error), "cannot set the Task in progress");
        let unanswered = matches!(
            error,
            FhirError::Transport { .. }
                | FhirError::Timeout(_)
                | FhirError::Unavailable(_)
                | FhirError::Server { .. }
        );
        if !unanswered {
            // The server refused it: trying again would be refused again.
            let _ = self.services.state.forget_claim(id).await;
            return ClaimOutcome::Lost;
        }
        let current: Option<Value> = self.local().read("Task", id).await.ok();
        match current {
            Some(current) if current["status"] == "in-progress" => {
                tracing::info!(task = %id, "the claim's answer was lost, but the Task is in progress: going on");
                ClaimOutcome::Claimed(current)
            }
            Some(current) if current["status"] == "requested" => {
                ClaimOutcome::Unknown(version_of(&current))
            }
            Some(current) => {
                tracing::warn!(task = %id, status = ?current["status"], "the Task changed before the claim");
                let _ = self.services.state.claim_done(id).await;
                ClaimOutcome::Lost
            }
            None => ClaimOutcome::Unknown(None),
        }
    }

    /// A claimed (in-progress) Task starts an instance or reaches a waiting one.
    async fn continue_claimed(self: &Arc<Self>, deployment: &Arc<Deployment>, task: Value) {
        let id = task["id"].as_str().unwrap_or_default().to_owned();
        let Some(key) = business_key(&task).map(str::to_owned) else {
            self.fail_claimed(task, "Task has no business-key input")
                .await;
            return;
        };
        let message = message_name(&task).unwrap_or_default().to_owned();
        let correlation = correlation_key(&task).map(str::to_owned);
        tracing::info!(
            task = %id, process = %deployment.key(), message = %message,
            business_key = %key, correlation_key = ?correlation, "Task received"
        );
        let guard = match self.locks.lock(&key, &self.services.state).await {
            Ok(guard) => guard,
            Err(error) => {
                tracing::error!(task = %id, error = %ErrorChain(&error), "cannot lease the business key; the Task stays claimed and is taken over");
                return;
            }
        };
        // Waiting for the lease may have taken long enough for another BPE to take the
        // claim over (this one's lease ran out meanwhile).
        match self.services.state.owns_claim(&id).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(task = %id, "claim taken over by another BPE");
                return;
            }
            Err(error) => {
                tracing::error!(task = %id, error = %ErrorChain(&error), "cannot read the claim; the Task stays claimed and is taken over");
                return;
            }
        }
        let lease = guard.lease();
        let Some(candidates) = self.settled_instances(&key, lease).await else {
            tracing::error!(task = %id, "cannot read instances; the Task stays claimed and is taken over");
            return;
        };
        for stored in candidates
            .into_iter()
            .filter(|s| s.deployment == deployment.key())
        {
            let mut instance = stored.instance;
            let mut received = match instance.variable(RECEIVED_TASKS) {
                Some(Value::Array(tasks)) => tasks.clone(),
                _ => Vec::new(),
            };
            received.push(task.clone());
            let mut variables = Map::new();
            variables.insert(RECEIVED_TASKS.into(), Value::Array(received));
            match deployment.engine.deliver(
                &mut instance,
                &message,
                correlation.as_deref(),
                &variables,
            ) {
                Ok(true) => {
                    self.drive(deployment, instance, Some(&id), lease).await;
                    return;
                }
                Ok(false) => {}
                Err(error) => {
                    self.fail_claimed(task, &format!("Unable to correlate Task: {error}"))
                        .await;
                    return;
                }
            }
        }
        if deployment.state != ProcessState::Active {
            let reason = format!(
                "Process {} is {}: it starts no new instances",
                deployment.key(),
                deployment.state.name()
            );
            self.fail_claimed(task, &reason).await;
            return;
        }
        if !deployment.start_messages.contains(&message) {
            let reason = format!(
                "Unable to correlate Task: no instance of {} with business key {key}{} waits for message '{message}', and it starts no new one",
                deployment.key(),
                correlation.as_deref().map(|c| format!(" and correlation key {c}")).unwrap_or_default()
            );
            self.fail_claimed(task, &reason).await;
            return;
        }
        let mut variables = Map::new();
        variables.insert(START_TASK.into(), task.clone());
        match deployment
            .engine
            .correlate(&mut [], &message, Some(&key), None, variables)
        {
            Ok(Some(mut instance)) => {
                // Named after its start Task: a start replayed after a crash is the same
                // instance, so its sends are recognised as already made.
                instance.id = format!("task-{id}");
                tracing::info!(task = %id, instance = %instance.id, process = %deployment.key(), "process started");
                self.drive(deployment, instance, Some(&id), lease).await;
            }
            Ok(None) | Err(_) => {
                self.fail_claimed(
                    task,
                    &format!("Process with start message-name '{message}' not found"),
                )
                .await;
            }
        }
    }

    /// The running instances of business key `key`, read under its lease. A run another BPE
    /// (or this one, before a restart) cut short is finished first: a reply must meet the
    /// instance waiting for it, not one still before the send that asked for it.
    async fn settled_instances(
        self: &Arc<Self>,
        key: &str,
        lease: &Lease,
    ) -> Option<Vec<crate::state::StoredInstance>> {
        let read = |error| {
            tracing::error!(business_key = %key, error = %ErrorChain(&error), "cannot read instances");
        };
        let found = self
            .services
            .state
            .running_by_key(key)
            .await
            .map_err(read)
            .ok()?;
        let mut resumed = false;
        for stored in found.iter().filter(|s| s.interrupted) {
            if let Some(deployment) = self.deployment(&stored.deployment).cloned() {
                tracing::info!(instance = %stored.instance.id, "going on with an interrupted run before delivering to it");
                self.drive(&deployment, stored.instance.clone(), None, lease)
                    .await;
                resumed = true;
            }
        }
        if !resumed {
            return Some(found);
        }
        self.services
            .state
            .running_by_key(key)
            .await
            .map_err(read)
            .ok()
    }

    /// A completed QuestionnaireResponse answers the user task it was created for.
    pub(crate) async fn on_questionnaire_response(self: &Arc<Self>, mut response: Value) {
        if response["status"].as_str() != Some("completed") {
            return;
        }
        let Some(id) = response["id"].as_str().map(str::to_owned) else {
            return;
        };
        let Ok(Some((instance_id, node))) = self.services.state.take_user_task(&id).await else {
            tracing::debug!(questionnaire_response = %id, "no open user task waits for it");
            return;
        };
        let Some((guard, mut instance, deployment)) = self.lock_instance(&instance_id).await else {
            return;
        };
        // Another BPE sharing the state database may have heard of the answer too, and been
        // first.
        if !matches!(self.services.state.take_user_task(&id).await, Ok(Some(_))) {
            return;
        }
        response["status"] = json!("amended");
        match self.local().update(&response).await {
            Ok(updated) => response = updated,
            Err(error) => {
                tracing::warn!(questionnaire_response = %id, error = %ErrorChain(&error), "cannot set the QuestionnaireResponse amended")
            }
        }
        let mut variables = Map::new();
        variables.insert(QUESTIONNAIRE_RESPONSE.into(), response);
        if let Err(error) = deployment
            .engine
            .complete_user_task(&mut instance, &node, &variables)
        {
            tracing::warn!(questionnaire_response = %id, instance = %instance_id, error = %ErrorChain(&error), "user task not open");
            let _ = self.services.state.remove_user_task(&id).await;
            return;
        }
        let _ = self.services.state.remove_user_task(&id).await;
        self.drive(&deployment, instance, None, guard.lease()).await;
    }

    /// Runs `instance` until it waits or ends, then completes or fails its Tasks if it ended,
    /// saves it (marking `claimed` handled), and passes on the signals it threw.
    async fn drive(
        self: &Arc<Self>,
        deployment: &Arc<Deployment>,
        mut instance: Instance,
        claimed: Option<&str>,
        lease: &Lease,
    ) {
        // Step by step: before a message send the instance is saved, so that a BPE killed
        // during the send resumes at the send (with the variables it had) rather than
        // replaying handlers whose results may differ (new correlation keys, say).
        loop {
            let sends_next = deployment
                .engine
                .next_node(&instance)
                .is_some_and(|node| deployment.send_nodes.contains(node));
            if sends_next {
                if let Err(error) = self
                    .services
                    .state
                    .save(lease, &deployment.key(), &instance, claimed, true)
                    .await
                {
                    log_save_error(&instance, &error, "cannot save the instance before a send");
                    return;
                }
            }
            match deployment.engine.step(&mut instance).await {
                Ok(Step::Progressed) => {}
                // Waiting or finished.
                Ok(_) => break,
                Err(error) => {
                    if !instance.is_finished() {
                        instance.state = InstanceState::Failed {
                            element: error_element(&error),
                            reason: error.to_string(),
                        };
                    }
                    break;
                }
            }
        }
        self.services.step_boundary("ran").await;
        if instance.is_finished() {
            // The Tasks' final status is written before the instance is saved: not by a BPE
            // whose lease was taken over meanwhile.
            if !matches!(self.services.state.holds(lease).await, Ok(true)) {
                tracing::warn!(instance = %instance.id, "lease lost before finishing the instance's Tasks; another BPE goes on");
                return;
            }
            self.finish_tasks(&instance, &deployment.key()).await;
            self.services.step_boundary("tasks-finished").await;
            match &instance.state {
                InstanceState::Failed { element, reason } => tracing::warn!(
                    instance = %instance.id, process = %deployment.key(), %element, %reason, "process failed"
                ),
                _ => {
                    tracing::info!(instance = %instance.id, process = %deployment.key(), "process ended")
                }
            }
        }
        let signals = instance.take_signals();
        if let Err(error) = self
            .services
            .state
            .save(lease, &deployment.key(), &instance, claimed, false)
            .await
        {
            log_save_error(&instance, &error, "cannot save the instance");
            return;
        }
        self.services.step_boundary("saved").await;
        self.timers.notify_one();
        for name in signals {
            let dispatcher = self.clone();
            let from = instance.id.clone();
            self.spawn(dispatcher.broadcast(name, from));
        }
    }

    /// A signal reaches every other running instance that waits for it.
    /// (Boxed: a signal's receivers may throw signals in turn.)
    fn broadcast(
        self: Arc<Self>,
        name: String,
        from: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move { self.deliver_signal(&name, &from).await })
    }

    async fn deliver_signal(self: &Arc<Self>, name: &str, from: &str) {
        let Ok(ids) = self.services.state.waiting_for_signal(name).await else {
            return;
        };
        for id in ids.into_iter().filter(|id| id != from) {
            let Some((guard, mut instance, deployment)) = self.lock_instance(&id).await else {
                continue;
            };
            if let Err(error) = deployment
                .engine
                .signal(std::slice::from_mut(&mut instance), name)
            {
                tracing::warn!(instance = %id, signal = %name, error = %ErrorChain(&error), "signal not delivered");
                continue;
            }
            self.drive(&deployment, instance, None, guard.lease()).await;
        }
    }

    /// An ended instance's Tasks still in progress become completed (with the outputs its
    /// handlers added), or failed with the reason when the instance failed.
    async fn finish_tasks(&self, instance: &Instance, process: &str) {
        let (status, error) = match &instance.state {
            InstanceState::Failed { element, reason } => (
                "failed",
                Some(format!(
                    "Process {} has fatal error in step {element}, reason: {reason}",
                    instance.process_id
                )),
            ),
            _ => ("completed", None),
        };
        let mut tasks: Vec<Value> = instance.variable(START_TASK).cloned().into_iter().collect();
        if let Some(Value::Array(received)) = instance.variable(RECEIVED_TASKS) {
            tasks.extend(received.iter().cloned());
        }
        for mut task in tasks {
            if task["status"].as_str() != Some("in-progress") {
                continue;
            }
            task["status"] = json!(status);
            if let Some(reason) = &error {
                add_output(
                    &mut task,
                    parameter(BPMN_MESSAGE, ERROR, "valueString", json!(reason)),
                );
            }
            let written = self.local().update(&task).await;
            if written.is_ok() {
                self.services
                    .metrics
                    .task_finished(Some(process), error.is_some());
            }
            if let Err(e) = written {
                // A run taken over from a BPE that died after writing it finds it written.
                let id = task["id"].as_str().unwrap_or_default();
                let current: Option<Value> = self.local().read("Task", id).await.ok();
                if current.is_some_and(|c| c["status"] == json!(status)) {
                    tracing::debug!(task = %id, instance = %instance.id, "the Task's final status was written before");
                } else {
                    tracing::warn!(task = %id, instance = %instance.id, error = %ErrorChain(&e), "cannot write the Task's final status");
                }
            }
        }
    }

    /// Fails a Task not yet claimed, only if nobody changed it since it was read.
    async fn fail_task(&self, mut task: Value, version: Option<i64>, reason: &str) {
        tracing::warn!(task = ?task["id"], %reason, "Task failed");
        task["status"] = json!("failed");
        add_output(
            &mut task,
            parameter(BPMN_MESSAGE, ERROR, "valueString", json!(reason)),
        );
        match self.local().update_if_match(&task, version).await {
            Ok(_) => self.services.metrics.task_finished(None, true),
            Err(error) => {
                tracing::warn!(task = ?task["id"], error = %ErrorChain(&error), "cannot set the Task failed")
            }
        }
    }

    /// Fails a claimed Task and marks the claim handled.
    async fn fail_claimed(&self, task: Value, reason: &str) {
        let id = task["id"].as_str().unwrap_or_default().to_owned();
        self.fail_task(task, None, reason).await;
        let _ = self.services.state.claim_done(&id).await;
    }

    /// How often this BPE renews its lease on the state database and looks for work of
    /// dead BPEs.
    pub(crate) fn renewal_interval(&self) -> Duration {
        (self.services.state.lease_duration() / 3).max(Duration::from_millis(50))
    }

    /// Keeps this BPE's lease on the state database alive and takes over the work of BPEs
    /// whose leases ran out, for as long as the BPE runs.
    pub(crate) async fn keep_alive(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.renewal_interval()).await;
            if let Err(error) = self.services.state.renew().await {
                tracing::error!(error = %ErrorChain(&error), "cannot renew the BPE's lease");
                continue;
            }
            self.take_over().await;
        }
    }

    /// Work of dead BPEs (or of this one before a restart): instances stopped in the middle
    /// of a run (saved before a send) go on from there, and claimed Tasks not yet acted on
    /// are handled if still in progress, claimed again if still requested.
    pub(crate) async fn take_over(self: &Arc<Self>) {
        let work = match self.services.state.take_over().await {
            Ok(work) => work,
            Err(error) => {
                tracing::error!(error = %ErrorChain(&error), "cannot look for work of stopped BPEs");
                return;
            }
        };
        for id in work.interrupted {
            tracing::info!(instance = %id, "resuming an instance a stopped BPE was running");
            let dispatcher = self.clone();
            self.spawn(async move { dispatcher.run_instance(&id).await });
        }
        for claimed in work.claims {
            let dispatcher = self.clone();
            self.spawn(async move { dispatcher.resume_claim(claimed).await });
        }
    }

    async fn resume_claim(self: &Arc<Self>, claimed: Value) {
        let Some(id) = claimed["id"].as_str().map(str::to_owned) else {
            return;
        };
        let current: Value = match self.local().read("Task", &id).await {
            Ok(task) => task,
            Err(error) => {
                tracing::warn!(task = %id, error = %ErrorChain(&error), "cannot read a claimed Task");
                return;
            }
        };
        let status = current["status"].as_str().unwrap_or_default().to_owned();
        if !matches!(status.as_str(), "in-progress" | "requested") {
            let _ = self.services.state.claim_done(&id).await;
            return;
        }
        let Some(deployment) = self.deployment_of(&current) else {
            return self.fail_claimed(current, "Process not found").await;
        };
        if status == "requested" {
            tracing::info!(task = %id, "claiming a Task a stopped BPE had not claimed on the server");
            // Its claim is this BPE's now, with the business key it was recorded with.
            let version = version_of(&current);
            let mut task = current;
            if claimed["input"].is_array() {
                task["input"] = claimed["input"].clone();
            }
            return self.claim_on_server(task, version, &deployment).await;
        }
        tracing::info!(task = %id, "resuming a Task a stopped BPE had claimed");
        self.continue_claimed(&deployment, current).await;
    }

    /// The deployed process a Task's `instantiatesCanonical` names.
    fn deployment_of(&self, task: &Value) -> Option<Arc<Deployment>> {
        let canonical = task["instantiatesCanonical"].as_str().unwrap_or_default();
        process_key(canonical).and_then(|key| self.deployments.get(&key).cloned())
    }
}

/// A resource's `meta.versionId` as a number.
fn version_of(resource: &Value) -> Option<i64> {
    resource
        .pointer("/meta/versionId")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
}

/// How often a claim that did not reach the server is tried (with waits of 0.2, 0.4 … 3.2 s).
const CLAIM_ATTEMPTS: u32 = 5;

/// What became of a claim whose request failed.
enum ClaimOutcome {
    /// The Task is in progress: the claim reached the server.
    Claimed(Value),
    /// The Task is still requested (at this version, if it could be read).
    Unknown(Option<i64>),
    /// The Task changed otherwise: not this BPE's to handle.
    Lost,
}

/// A save refused because another BPE took over is expected after a stall; any other
/// failure is the database's.
fn log_save_error(instance: &Instance, error: &Error, message: &str) {
    match error {
        Error::Fenced(reason) => {
            tracing::warn!(instance = %instance.id, %reason, "another BPE took over; this run is dropped")
        }
        _ => tracing::error!(instance = %instance.id, error = %ErrorChain(error), "{message}"),
    }
}

fn error_element(error: &dsf_bpmn::Error) -> String {
    match error {
        dsf_bpmn::Error::Runtime { element, .. } | dsf_bpmn::Error::Deploy { element, .. } => {
            element.clone()
        }
        _ => String::new(),
    }
}
