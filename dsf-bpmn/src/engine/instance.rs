//! A process instance as plain serde data: scopes with their variables, tokens with where they
//! are and what they wait for, and what the instance waits for (messages, timers, user tasks).
//! The engine changes it one step at a time; the caller may store it after any step and resume
//! from the stored copy.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum InstanceState {
    /// Not finished: tokens run or wait.
    Running,
    /// Every token reached an end event.
    Completed,
    /// Ended by a terminate end event.
    Terminated,
    /// An unhandled BPMN error or a failed handler without retries left.
    Failed {
        /// The element where it failed.
        element: String,
        /// Why, as the error or handler said.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum ScopeKind {
    Process,
    SubProcess,
    /// The body of a multi-instance activity: counts and, for sequential ones, what is next.
    MultiInstance {
        items: Vec<Value>,
        started: usize,
        completed: usize,
        sequential: bool,
    },
    /// One iteration of a multi-instance activity.
    Iteration,
    /// The process a call activity called: its nodes run here, its variables stop here.
    Called {
        process: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Scope {
    pub id: u64,
    pub parent: Option<u64>,
    /// The token waiting for this scope to finish (none for the process scope).
    pub owner: Option<u64>,
    pub kind: ScopeKind,
    pub variables: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum TokenState {
    /// Enters its node at the next step.
    Arriving,
    /// Runs its node's behaviour when `due` (asynchronous continuation or a retry).
    Job {
        due: i64,
        retries_left: Option<u32>,
        interval: i64,
    },
    /// Waits for a subscription of its own, or for a scope it owns.
    Waiting,
    /// Leaves its node at the next step: by `flows` when a gateway chose them, else by the
    /// node's outgoing flows. `due` delays it (asynchronous continuation after the node).
    Leaving {
        flows: Option<Vec<String>>,
        due: Option<i64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Token {
    pub id: u64,
    pub scope: u64,
    pub node: String,
    pub state: TokenState,
    /// Inside a multi-instance iteration: the node runs once and the iteration ends there.
    pub iteration: bool,
}

/// What fires a subscription.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Event {
    Message {
        name: String,
        correlation_key: Option<String>,
    },
    Timer {
        due: i64,
        every: Option<i64>,
        repeats: Option<u32>,
    },
    UserTask,
    Signal {
        name: String,
    },
    /// A conditional event: fires once `condition` holds after a variable (the named one,
    /// if `variable` is set) changed in a way `events` lists (`create`, `update`; any when
    /// absent).
    Condition {
        condition: String,
        variable: Option<String>,
        #[serde(default)]
        events: Option<String>,
    },
}

/// What happens to the owning token when a subscription fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Effect {
    /// The token's own wait ends (message catch, receive task, timer catch, user task).
    Complete,
    /// A boundary event: the activity is cancelled (interrupting) or carries on.
    Boundary { interrupting: bool },
    /// A branch of an event-based gateway won the race: the token moves to `node`.
    Race,
    /// The start event `node` of an event subprocess of `scope` (no token owns it).
    EventSubProcess { scope: u64, interrupting: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Subscription {
    pub id: u64,
    pub token: u64,
    /// Where the flow continues when it fires (the event or task node).
    pub node: String,
    pub event: Event,
    pub effect: Effect,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Join {
    pub node: String,
    pub scope: u64,
    pub arrived: usize,
}

/// A running or finished process instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// The instance's id, given by the caller at start.
    pub id: String,
    /// The id of the process it runs.
    pub process_id: String,
    /// The business key, once set.
    pub business_key: Option<String>,
    /// Running or how it ended.
    pub state: InstanceState,
    /// The nodes entered, in order: the path the instance took, the last [`PATH_LIMIT`] of
    /// them (a process looping on a timer would otherwise grow without end).
    pub path: Vec<String>,
    pub(crate) scopes: Vec<Scope>,
    pub(crate) tokens: Vec<Token>,
    pub(crate) subscriptions: Vec<Subscription>,
    pub(crate) joins: Vec<Join>,
    pub(crate) next_id: u64,
    /// Signals this instance threw that the caller has not yet taken (see
    /// [`Instance::take_signals`]).
    #[serde(default)]
    pub(crate) signals: Vec<String>,
    /// Variables set since conditional events were last evaluated, each with whether it was
    /// created (true) or updated.
    #[serde(default)]
    pub(crate) changed: Vec<(String, bool)>,
}

/// How many of the most recent nodes entered [`Instance::path`] keeps.
pub const PATH_LIMIT: usize = 1000;

/// What an instance waits for, for the caller to route messages and schedule timers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Waiting {
    /// A message, by name.
    Message {
        /// The message name (not its id).
        name: String,
        /// Set for a reply to one branch of a multi-instance send.
        correlation_key: Option<String>,
        /// The catching event or receive task.
        node: String,
    },
    /// A timer.
    Timer {
        /// When it is due, Unix milliseconds.
        due: i64,
        /// The timer event.
        node: String,
    },
    /// A user task to be completed.
    UserTask {
        /// The user task.
        node: String,
    },
    /// A signal, by name.
    Signal {
        /// The signal name.
        name: String,
        /// The catching event.
        node: String,
    },
    /// A condition to become true when variables change.
    Condition {
        /// The `${…}` expression.
        condition: String,
        /// The conditional event.
        node: String,
    },
}

impl Instance {
    pub(crate) fn new(
        id: String,
        process_id: &str,
        business_key: Option<String>,
        variables: Map<String, Value>,
    ) -> Self {
        Instance {
            id,
            process_id: process_id.to_owned(),
            business_key,
            state: InstanceState::Running,
            path: Vec::new(),
            scopes: vec![Scope {
                id: 0,
                parent: None,
                owner: None,
                kind: ScopeKind::Process,
                variables,
            }],
            tokens: Vec::new(),
            subscriptions: Vec::new(),
            joins: Vec::new(),
            next_id: 1,
            signals: Vec::new(),
            changed: Vec::new(),
        }
    }

    /// Records that a token entered `node`.
    pub(crate) fn entered(&mut self, node: &str) {
        if self.path.len() >= PATH_LIMIT {
            self.path.drain(..self.path.len() + 1 - PATH_LIMIT);
        }
        self.path.push(node.to_owned());
    }

    pub(crate) fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The instance's own variables (the process scope).
    pub fn variables(&self) -> &Map<String, Value> {
        // A stored instance edited by hand may lack its process scope: no panic over it.
        static NONE: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);
        self.scope(0).map_or(&*NONE, |s| &s.variables)
    }

    /// One of the instance's own variables.
    pub fn variable(&self, name: &str) -> Option<&Value> {
        self.variables().get(name)
    }

    /// Whether it ended, in any way.
    pub fn is_finished(&self) -> bool {
        self.state != InstanceState::Running
    }

    /// Messages, signals, timers and user tasks the instance waits for now.
    pub fn waiting(&self) -> Vec<Waiting> {
        self.subscriptions
            .iter()
            .map(|s| match &s.event {
                Event::Message {
                    name,
                    correlation_key,
                } => Waiting::Message {
                    name: name.clone(),
                    correlation_key: correlation_key.clone(),
                    node: s.node.clone(),
                },
                Event::Timer { due, .. } => Waiting::Timer {
                    due: *due,
                    node: s.node.clone(),
                },
                Event::UserTask => Waiting::UserTask {
                    node: s.node.clone(),
                },
                Event::Condition { condition, .. } => Waiting::Condition {
                    condition: condition.clone(),
                    node: s.node.clone(),
                },
                Event::Signal { name } => Waiting::Signal {
                    name: name.clone(),
                    node: s.node.clone(),
                },
            })
            .collect()
    }

    /// The names of the signals this instance threw since the last call. A signal reaches
    /// every waiting instance of the deployment: hand them to [`super::Engine::signal`]
    /// with the other instances (the thrower's own catches have already heard it).
    pub fn take_signals(&mut self) -> Vec<String> {
        std::mem::take(&mut self.signals)
    }

    /// The earliest time at which a timer or a delayed job is due.
    pub fn next_due(&self) -> Option<i64> {
        let timers = self.subscriptions.iter().filter_map(|s| match s.event {
            Event::Timer { due, .. } => Some(due),
            _ => None,
        });
        let jobs = self.tokens.iter().filter_map(|t| match t.state {
            TokenState::Job { due, .. } => Some(due),
            TokenState::Leaving { due, .. } => due,
            _ => None,
        });
        timers.chain(jobs).min()
    }

    pub(crate) fn scope(&self, id: u64) -> Option<&Scope> {
        self.scopes.iter().find(|s| s.id == id)
    }

    pub(crate) fn scope_mut(&mut self, id: u64) -> Option<&mut Scope> {
        self.scopes.iter_mut().find(|s| s.id == id)
    }

    pub(crate) fn token(&self, id: u64) -> Option<&Token> {
        self.tokens.iter().find(|t| t.id == id)
    }

    pub(crate) fn token_mut(&mut self, id: u64) -> Option<&mut Token> {
        self.tokens.iter_mut().find(|t| t.id == id)
    }

    /// Scope ids from `scope` up to the process scope.
    pub(crate) fn chain(&self, scope: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut current = Some(scope);
        while let Some(id) = current {
            out.push(id);
            current = self.scope(id).and_then(|s| s.parent);
        }
        out
    }

    /// Scope ids from `scope` up to the first one that holds a process's variables: the
    /// process scope, or the scope of a called process (which sees nothing of its caller).
    pub(crate) fn variable_chain(&self, scope: u64) -> Vec<u64> {
        let mut out = Vec::new();
        for id in self.chain(scope) {
            out.push(id);
            if matches!(
                self.scope(id).map(|s| &s.kind),
                Some(ScopeKind::Called { .. })
            ) {
                break;
            }
        }
        out
    }

    /// The process whose nodes run in `scope`.
    pub(crate) fn process_of(&self, scope: u64) -> &str {
        // Walked without collecting: this runs on every step.
        let mut current = self.scope(scope);
        while let Some(s) = current {
            if let ScopeKind::Called { process } = &s.kind {
                return process;
            }
            current = s.parent.and_then(|p| self.scope(p));
        }
        &self.process_id
    }

    /// The variables visible in `scope`: its own over its parents'.
    pub(crate) fn visible(&self, scope: u64) -> Map<String, Value> {
        let mut out = Map::new();
        for id in self.variable_chain(scope).into_iter().rev() {
            if let Some(s) = self.scope(id) {
                for (k, v) in &s.variables {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
        out
    }

    /// Sets `name` where it is already visible from `scope`, else on the process (or on
    /// `scope` itself when `local`).
    pub(crate) fn set_variable(&mut self, scope: u64, name: &str, value: Value, local: bool) {
        let chain = self.variable_chain(scope);
        let target = if local {
            scope
        } else {
            chain
                .iter()
                .copied()
                .find(|id| {
                    self.scope(*id)
                        .is_some_and(|s| s.variables.contains_key(name))
                })
                .or(chain.last().copied())
                .unwrap_or(0)
        };
        let created = match self.scope_mut(target) {
            Some(s) => s.variables.insert(name.to_owned(), value).is_none(),
            None => return,
        };
        if !self.changed.iter().any(|(c, _)| c == name) {
            self.changed.push((name.to_owned(), created));
        }
    }

    /// Removes `scope` and everything inside it: child scopes, their tokens, subscriptions and
    /// joins.
    pub(crate) fn remove_scope_tree(&mut self, scope: u64) {
        let mut doomed = vec![scope];
        let mut i = 0;
        while i < doomed.len() {
            let parent = doomed[i];
            doomed.extend(
                self.scopes
                    .iter()
                    .filter(|s| s.parent == Some(parent))
                    .map(|s| s.id),
            );
            i += 1;
        }
        let tokens: Vec<u64> = self
            .tokens
            .iter()
            .filter(|t| doomed.contains(&t.scope))
            .map(|t| t.id)
            .collect();
        self.tokens.retain(|t| !doomed.contains(&t.scope));
        self.subscriptions.retain(|s| {
            !tokens.contains(&s.token)
                && !matches!(s.effect, Effect::EventSubProcess { scope, .. } if doomed.contains(&scope))
        });
        self.joins.retain(|j| !doomed.contains(&j.scope));
        self.scopes.retain(|s| !doomed.contains(&s.id));
    }

    /// Ends everything running in `scope` but keeps the scope: its tokens (with what they
    /// own), child scopes, pending joins and the armed event subprocesses of the scope.
    pub(crate) fn clear_scope(&mut self, scope: u64) {
        let tokens: Vec<u64> = self
            .tokens
            .iter()
            .filter(|t| t.scope == scope)
            .map(|t| t.id)
            .collect();
        for token in tokens {
            self.remove_token_tree(token);
        }
        let children: Vec<u64> = self
            .scopes
            .iter()
            .filter(|s| s.parent == Some(scope))
            .map(|s| s.id)
            .collect();
        for child in children {
            self.remove_scope_tree(child);
        }
        self.joins.retain(|j| j.scope != scope);
        self.subscriptions.retain(
            |s| !matches!(s.effect, Effect::EventSubProcess { scope: x, .. } if x == scope),
        );
    }

    /// Removes a token and everything it owns (its subscriptions and the scopes it waits for).
    pub(crate) fn remove_token_tree(&mut self, token: u64) {
        let owned: Vec<u64> = self
            .scopes
            .iter()
            .filter(|s| s.owner == Some(token))
            .map(|s| s.id)
            .collect();
        for scope in owned {
            self.remove_scope_tree(scope);
        }
        self.subscriptions.retain(|s| s.token != token);
        self.tokens.retain(|t| t.id != token);
    }
}
