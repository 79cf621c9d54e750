//! How far the BPE got: its subscriptions and the Tasks it handled, shared by the event
//! loops that update it and the readers (tests, metrics, readiness) that watch it.

/// What the BPE is doing, for operators and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BpeStatus {
    /// The Task subscription is bound (and its first catch-up done).
    pub tasks_connected: bool,
    /// The QuestionnaireResponse subscription is bound.
    pub questionnaire_responses_connected: bool,
    /// Websocket connects so far, both subscriptions (more than 2 after reconnects).
    pub connects: u64,
    /// Tasks handled so far (started, continued or failed).
    pub tasks_handled: u64,
}
