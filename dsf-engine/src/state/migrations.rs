//! The state database's schema, as versioned steps. A step is never edited once released:
//! a change is a new step. Both dialects run the same text (`BIGINT` and `TEXT` mean the
//! same to SQLite), and version 1 uses `IF NOT EXISTS` so that a SQLite state file written
//! before the schema was versioned is adopted as it is.

use super::db::Migration;

/// Every step, in order.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "instances, claimed Tasks, sends, user tasks, event times",
        sql: "CREATE TABLE IF NOT EXISTS instances(
                 id TEXT PRIMARY KEY,
                 deployment TEXT NOT NULL,
                 business_key TEXT,
                 alternative_key TEXT,
                 finished BIGINT NOT NULL,
                 next_due BIGINT,
                 signals TEXT NOT NULL,
                 format BIGINT NOT NULL,
                 data TEXT NOT NULL,
                 mid_run BIGINT NOT NULL DEFAULT 0);
             CREATE INDEX IF NOT EXISTS instances_key ON instances(business_key) WHERE finished = 0;
             CREATE INDEX IF NOT EXISTS instances_alternative ON instances(alternative_key) WHERE finished = 0;
             CREATE INDEX IF NOT EXISTS instances_due ON instances(next_due) WHERE finished = 0;
             CREATE TABLE IF NOT EXISTS sent(
                 key TEXT PRIMARY KEY,
                 state TEXT NOT NULL,
                 task TEXT NOT NULL,
                 target_url TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS claimed(
                 task_id TEXT PRIMARY KEY,
                 task TEXT NOT NULL,
                 done BIGINT NOT NULL);
             CREATE TABLE IF NOT EXISTS user_tasks(
                 questionnaire_response TEXT PRIMARY KEY,
                 instance_id TEXT NOT NULL,
                 node TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS last_events(
                 kind TEXT PRIMARY KEY,
                 millis BIGINT NOT NULL)",
    },
    Migration {
        version: 2,
        name: "BPE nodes and their leases, for several BPEs on one database",
        sql: "ALTER TABLE instances ADD COLUMN owner TEXT;
             ALTER TABLE claimed ADD COLUMN owner TEXT;
             ALTER TABLE claimed ADD COLUMN claimed_at BIGINT NOT NULL DEFAULT 0;
             CREATE TABLE bpe_nodes(
                 id TEXT PRIMARY KEY,
                 lease_until BIGINT NOT NULL,
                 started BIGINT NOT NULL);
             CREATE TABLE key_leases(
                 lease_key TEXT PRIMARY KEY,
                 owner TEXT NOT NULL,
                 fence BIGINT NOT NULL);
             CREATE INDEX instances_mid_run ON instances(owner) WHERE mid_run = 1 AND finished = 0;
             CREATE INDEX claimed_open ON claimed(owner) WHERE done = 0",
    },
];
