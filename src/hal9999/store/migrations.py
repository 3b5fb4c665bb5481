"""The store's schema, as an append-only list of migrations.

Each migration is applied once, in order, inside a transaction, and recorded in the
``schema_migrations`` table. NEVER edit or reorder a migration that has been released:
databases in the field have already applied it. To change the schema, append a new one
with the next version number.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing: hal9999.lighttyping says why (the thin `hal task list`)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import NamedTuple
else:
    from hal9999.lighttyping import NamedTuple


class Migration(NamedTuple):
    """One schema step."""

    version: int
    """Strictly increasing, from 1."""
    name: str
    """Short description, recorded with the version."""
    sql: str
    """Statements separated by ``;``."""

    def statements(self) -> Iterator[str]:
        """The statements of :attr:`sql`; ``;`` inside strings, comments or triggers is
        kept."""
        import sqlite3  # with the store, which has it loaded

        pending = ""
        for part in self.sql.split(";"):
            pending += part + ";"
            if sqlite3.complete_statement(pending):
                if pending.strip(" \t\r\n;"):
                    yield pending
                pending = ""
        if pending.strip(" \t\r\n;"):
            raise ValueError(f"incomplete SQL statement in migration: {pending.strip()!r}")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "tasks and event index",
        """
        CREATE TABLE tasks (
            id               TEXT PRIMARY KEY,
            prompt           TEXT NOT NULL,
            agent            TEXT NOT NULL,
            provider         TEXT NOT NULL,
            process_manager  TEXT NOT NULL,
            repo             TEXT NOT NULL,
            repo_kind        TEXT NOT NULL CHECK (repo_kind IN ('local', 'url')),
            ref              TEXT,
            base_commit      TEXT,
            branch           TEXT NOT NULL,
            status           TEXT NOT NULL,
            created_at       REAL NOT NULL,
            started_at       REAL,
            finished_at      REAL,
            exit_code        INTEGER,
            error_code       TEXT,
            error_message    TEXT,
            sandbox_id       TEXT,
            runner_pid       INTEGER,
            session_dir      TEXT NOT NULL,
            agent_session_id TEXT,
            timeout_s        REAL,
            input_tokens     INTEGER NOT NULL DEFAULT 0,
            output_tokens    INTEGER NOT NULL DEFAULT 0,
            cost_usd         REAL,
            files_changed    INTEGER NOT NULL DEFAULT 0,
            env_keys         TEXT NOT NULL DEFAULT '[]',
            resumes          INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX tasks_created_at ON tasks (created_at);
        CREATE INDEX tasks_status ON tasks (status);

        -- An index of the JSONL event logs, which stay the source of truth. No foreign key
        -- to tasks: indexing must never fail an emit; delete_task removes the rows itself.
        CREATE TABLE events (
            task_id TEXT NOT NULL,
            seq     INTEGER NOT NULL,
            type    TEXT NOT NULL,
            ts      REAL NOT NULL,
            PRIMARY KEY (task_id, seq)
        ) WITHOUT ROWID;
        CREATE INDEX events_task_type ON events (task_id, type);
        """,
    ),
    Migration(
        2,
        "queue order, retries, providers, sandboxes",
        """
        ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN providers TEXT NOT NULL DEFAULT '[]';
        ALTER TABLE tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN agent_retries INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN infra_retries INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE tasks ADD COLUMN not_before REAL;
        CREATE INDEX tasks_queue ON tasks (status, priority, created_at);

        -- Sandboxes the warm pool (or a daemon-run task) holds, so a restarted daemon can
        -- tell its own sandboxes from orphans and mark recorded ones that are gone.
        CREATE TABLE sandboxes (
            provider     TEXT NOT NULL,
            id           TEXT NOT NULL,
            pool_key     TEXT NOT NULL,
            state        TEXT NOT NULL,
            task_id      TEXT,
            owner_pid    INTEGER,
            created_at   REAL NOT NULL,
            last_used_at REAL NOT NULL,
            detail       TEXT,
            PRIMARY KEY (provider, id)
        ) WITHOUT ROWID;
        CREATE INDEX sandboxes_task ON sandboxes (task_id);
        """,
    ),
    Migration(
        3,
        "global event sequence",
        """
        -- One counter for every event of every task: an index flush takes the next numbers
        -- in its write transaction, so they are unique and increase in commit order.
        CREATE TABLE event_counter (
            id    INTEGER PRIMARY KEY CHECK (id = 1),
            value INTEGER NOT NULL
        );
        INSERT INTO event_counter (id, value) VALUES (1, 0);
        -- NULL for rows indexed before this migration.
        ALTER TABLE events ADD COLUMN gseq INTEGER;
        CREATE UNIQUE INDEX events_gseq ON events (gseq);
        """,
    ),
    Migration(
        4,
        "gateway model calls",
        """
        -- One row per model call through the LLM gateway: what budgets and `hal task
        -- requests` read. Bodies are not kept (see gateway.store_bodies, masked when on).
        CREATE TABLE gateway_requests (
            id            INTEGER PRIMARY KEY AUTOINCREMENT,
            task_id       TEXT NOT NULL,
            ts            REAL NOT NULL,
            method        TEXT NOT NULL,
            path          TEXT NOT NULL,
            model         TEXT,
            status        INTEGER NOT NULL,
            latency_ms    REAL NOT NULL,
            input_tokens  INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens  INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            total_tokens  INTEGER NOT NULL DEFAULT 0,
            cost_usd      REAL,
            error         TEXT,
            retries       INTEGER NOT NULL DEFAULT 0,
            body          TEXT
        );
        CREATE INDEX gateway_requests_task ON gateway_requests (task_id, id);
        CREATE INDEX gateway_requests_ts ON gateway_requests (ts);
        """,
    ),
    Migration(
        5,
        "hive: agents, messages, turns, hive events",
        """
        -- Named long-lived agents. task_id is the agent's long-lived task whose
        -- session (workspace on hal/agent/<name>, agent home) every turn resumes.
        CREATE TABLE hive_agents (
            name         TEXT PRIMARY KEY,
            agent        TEXT NOT NULL,
            provider     TEXT NOT NULL,
            repo         TEXT,
            kind         TEXT NOT NULL DEFAULT 'agent',
            state        TEXT NOT NULL,
            detail       TEXT,
            task_id      TEXT,
            policy       TEXT NOT NULL DEFAULT '{}',
            created_at   REAL NOT NULL,
            updated_at   REAL NOT NULL,
            crashes      INTEGER NOT NULL DEFAULT 0,
            last_crash_at REAL
        );
        -- The broker's mailbox: sent -> delivered -> read. A rowid table, so the order of
        -- arrival is the rowid order.
        CREATE TABLE hive_messages (
            id           TEXT NOT NULL UNIQUE,
            sender       TEXT NOT NULL,
            recipient    TEXT NOT NULL,
            kind         TEXT NOT NULL,
            body         TEXT NOT NULL,
            ref          TEXT,
            state        TEXT NOT NULL CHECK (state IN ('sent', 'delivered', 'read')),
            created      REAL NOT NULL,
            delivered_at REAL,
            read_at      REAL
        );
        CREATE INDEX hive_messages_inbox ON hive_messages (recipient, state);
        CREATE INDEX hive_messages_created ON hive_messages (created);
        -- One row per turn of an agent (hal agent stats).
        CREATE TABLE hive_turns (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            agent        TEXT NOT NULL,
            task_id      TEXT,
            model        TEXT,
            wake_reason  TEXT NOT NULL,
            started_at   REAL NOT NULL,
            ended_at     REAL,
            duration_ms  REAL,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_tokens INTEGER NOT NULL DEFAULT 0,
            cache_write_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd     REAL,
            usage_source TEXT,
            tool_calls   INTEGER NOT NULL DEFAULT 0,
            tools        TEXT NOT NULL DEFAULT '{}',
            result       TEXT,
            open_threads INTEGER,
            messages     TEXT NOT NULL DEFAULT '[]'
        );
        CREATE INDEX hive_turns_agent ON hive_turns (agent, id);
        CREATE INDEX hive_turns_started ON hive_turns (started_at);
        -- Hive events; gseq comes from the same event_counter as task events.
        CREATE TABLE hive_events (
            gseq  INTEGER PRIMARY KEY,
            type  TEXT NOT NULL,
            ts    REAL NOT NULL,
            agent TEXT,
            body  TEXT NOT NULL
        );
        CREATE INDEX hive_events_ts ON hive_events (ts);
        """,
    ),
    Migration(
        6,
        "cloud machines",
        """
        -- One row per cloud machine hal made (or is making): the spend cap counts those
        -- running (ended_at NULL) and the machine-hours of the day from these rows.
        CREATE TABLE cloud_machines (
            provider    TEXT NOT NULL,
            machine_id  TEXT NOT NULL,
            started_at  REAL NOT NULL,
            ended_at    REAL,
            PRIMARY KEY (provider, machine_id)
        );
        CREATE INDEX cloud_machines_open ON cloud_machines (provider, ended_at);
        """,
    ),
    Migration(
        7,
        "hive approvals, questions and reminders",
        """
        -- Proposals waiting for the operator (spawn an agent, apply an agent's branch, destroy
        -- an agent, a gated tool call). `payload` is JSON; an apply pins the exact commit shown.
        CREATE TABLE hive_approvals (
            id          TEXT PRIMARY KEY,
            kind        TEXT NOT NULL CHECK (kind IN ('spawn', 'apply', 'destroy', 'tool')),
            proposer    TEXT NOT NULL,
            title       TEXT NOT NULL,
            payload     TEXT NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired')),
            reason      TEXT,
            result      TEXT,
            created     REAL NOT NULL,
            expires     REAL,
            resolved    REAL,
            resolved_by TEXT
        );
        CREATE INDEX hive_approvals_state ON hive_approvals (state, expires);
        -- Questions to the operator or to another agent; the answer goes to the asker's mailbox.
        CREATE TABLE hive_questions (
            id       TEXT PRIMARY KEY,
            asker    TEXT NOT NULL,
            target   TEXT NOT NULL,
            question TEXT NOT NULL,
            state    TEXT NOT NULL CHECK (state IN ('open', 'answered', 'expired')),
            answer   TEXT,
            answerer TEXT,
            created  REAL NOT NULL,
            expires  REAL,
            answered REAL
        );
        CREATE INDEX hive_questions_state ON hive_questions (state, expires);
        CREATE INDEX hive_questions_target ON hive_questions (target, state);
        -- Reminders an agent set for itself; `file_root` is a host directory hal made (the
        -- agent's own), `file_rel` a checked relative path below it.
        CREATE TABLE hive_reminders (
            id         TEXT PRIMARY KEY,
            agent      TEXT NOT NULL,
            body       TEXT NOT NULL,
            due        REAL NOT NULL,
            file_shown TEXT,
            file_root  TEXT,
            file_rel   TEXT,
            state      TEXT NOT NULL CHECK (state IN ('pending', 'delivered')),
            created    REAL NOT NULL,
            delivered  REAL,
            note       TEXT
        );
        CREATE INDEX hive_reminders_due ON hive_reminders (state, due);
        """,
    ),
    Migration(
        8,
        "queue order index",
        """
        -- The queue is read highest priority first, then oldest: an index in that order lets
        -- the scheduler read its few rows without sorting every queued task at each wake-up.
        DROP INDEX tasks_queue;
        CREATE INDEX tasks_queue_order ON tasks (status, priority DESC, created_at);
        """,
    ),
    Migration(
        9,
        "events without the type index",
        """
        -- Every event paid for a third b-tree (task, type) that only "the task's last phase"
        -- read: that is the newest phase row, found by walking the task's rows backwards on
        -- the primary key (a tenth of the cost of recording an event).
        DROP INDEX events_task_type;
        """,
    ),
    Migration(
        10,
        "hive gate uses",
        """
        -- The one use of each approval that gates a manager's stop or restart: `claimed` by a
        -- process (`holder`) before the action, `done` after it (see hive/gates.py).
        CREATE TABLE hive_gate_uses (
            approval_id TEXT PRIMARY KEY,
            holder      TEXT NOT NULL,
            state       TEXT NOT NULL CHECK (state IN ('claimed', 'done')),
            updated     REAL NOT NULL
        );
        """,
    ),
    Migration(
        11,
        "hive message send keys",
        """
        -- The key a sender gave a message (`hal msg send` makes one per send): the same key
        -- again is the same send, answered with the message committed the first time, so a
        -- retry after a dropped connection never sends it twice (see hive/broker.py).
        ALTER TABLE hive_messages ADD COLUMN send_key TEXT;
        CREATE UNIQUE INDEX hive_messages_send_key ON hive_messages (sender, send_key)
            WHERE send_key IS NOT NULL;
        """,
    ),
    Migration(
        12,
        "hive pinned repositories",
        """
        -- Every repository an apply proposal was pinned in, recorded before its pin: the pin
        -- sweeps found them by the proposals' rows, so a propose killed between its pin and
        -- its row in a repository no row named (or whose rows retention removed) left a pin
        -- no sweep ever looked for (see hive/approvals.py, sweep_pins).
        CREATE TABLE hive_pin_repos (
            repo  TEXT PRIMARY KEY,
            since REAL NOT NULL
        );
        INSERT INTO hive_pin_repos (repo, since)
            SELECT json_extract(payload, '$.repo'), MIN(created) FROM hive_approvals
            WHERE kind = 'apply' AND json_extract(payload, '$.repo') IS NOT NULL
            GROUP BY json_extract(payload, '$.repo');
        """,
    ),
    Migration(
        13,
        "hive loop guard restart",
        """
        -- When the operator last started the agent again: the message-loop guard counts a
        -- pair's messages from then on, so an agent it stopped does not stop again at its
        -- first message after `hal agent start` for the messages of before (hive/broker.py).
        ALTER TABLE hive_agents ADD COLUMN loop_since REAL;
        """,
    ),
    Migration(
        14,
        "runner start time",
        """
        -- When the process runner_pid names started: a pid alone may name a later process
        -- that reused it (tasks/alive.py).
        ALTER TABLE tasks ADD COLUMN runner_started INTEGER;
        """,
    ),
    Migration(
        15,
        "task issue",
        """
        -- The issue a task works on (hal run --issue), by its web address.
        ALTER TABLE tasks ADD COLUMN issue TEXT;
        """,
    ),
    Migration(
        16,
        "gateway calls in flight",
        """
        -- A model call from its start to its row in gateway_requests: a gateway killed
        -- mid-call (its row never written) leaves the call here, and the next gateway
        -- records it as interrupted (gateway/ledger.py), so no call goes uncounted.
        CREATE TABLE gateway_open_calls (
            key     TEXT PRIMARY KEY,
            task_id TEXT NOT NULL,
            ts      REAL NOT NULL,
            method  TEXT NOT NULL,
            path    TEXT NOT NULL,
            model   TEXT
        );
        """,
    ),
)
