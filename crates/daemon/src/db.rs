//! The daemon's persistent state in SQLite: instances, images, networks, snapshots, events.
//! Every change is one transaction; the schema carries a version in `PRAGMA user_version`.

use std::path::Path;

use api::daemon::{
    Event, Image, Instance, InstanceConfig, InstanceKind, InstanceStatus, Network, RestartPolicy,
};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::{DaemonError, Result};

/// The schema this code reads and writes.
const SCHEMA_VERSION: i64 = 1;
/// Events kept in the table; older ones are dropped.
const MAX_EVENTS: i64 = 10_000;

/// Columns added after schema 1 shipped (table, column, declaration): added in place to an
/// older database, so the schema version stays and older daemons still read it.
const ADDED_COLUMNS: [(&str, &str, &str); 6] = [
    ("instances", "kind", "TEXT NOT NULL DEFAULT 'vm'"),
    ("instances", "address", "TEXT"),
    ("images", "rootfs", "TEXT"),
    ("snapshots", "stateful", "INTEGER NOT NULL DEFAULT 1"),
    ("snapshots", "layer", "TEXT"),
    ("snapshots", "complete", "INTEGER NOT NULL DEFAULT 1"),
];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instances (
    name TEXT PRIMARY KEY,
    image TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    pid INTEGER,
    pid_start INTEGER,
    restarts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    last_exit TEXT,
    disk TEXT,
    kind TEXT NOT NULL DEFAULT 'vm',
    address TEXT
);
CREATE TABLE IF NOT EXISTS images (
    name TEXT PRIMARY KEY,
    kernel TEXT NOT NULL,
    initrd TEXT,
    disk TEXT,
    cmdline TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    rootfs TEXT
);
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY,
    bridge TEXT NOT NULL UNIQUE,
    address TEXT NOT NULL,
    nat INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    instance TEXT NOT NULL REFERENCES instances(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    stateful INTEGER NOT NULL DEFAULT 1,
    layer TEXT,
    complete INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (instance, name)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    instance TEXT,
    detail TEXT NOT NULL
);
";

/// The process of a running instance as stored (for re-attaching after a daemon restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredProcess {
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot), guards against pid reuse.
    pub start_time: u64,
}

/// A snapshot as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub name: String,
    pub created_at: i64,
    /// Memory and device state were captured (a VMM snapshot is in the directory).
    pub stateful: bool,
    /// The VM's frozen disk layer, if its disk was captured.
    pub layer: Option<String>,
    /// Taken to the end (false while it is being taken, or if a daemon died meanwhile).
    pub complete: bool,
}

fn snapshot_from_row(row: &Row<'_>) -> rusqlite::Result<StoredSnapshot> {
    Ok(StoredSnapshot {
        name: row.get("name")?,
        created_at: row.get("created_at")?,
        stateful: row.get("stateful")?,
        layer: row.get("layer")?,
        complete: row.get("complete")?,
    })
}

/// An open state database.
pub struct Db {
    conn: Connection,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Unix seconds now.
pub fn now() -> i64 {
    now_ms() / 1000
}

fn instance_from_row(row: &Row<'_>) -> rusqlite::Result<(Instance, Option<StoredProcess>)> {
    let config_text: String = row.get("config")?;
    let status_text: String = row.get("status")?;
    let pid: Option<i32> = row.get("pid")?;
    let pid_start: Option<i64> = row.get("pid_start")?;
    let bad = |what: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
    };
    let config: InstanceConfig =
        serde_json::from_str(&config_text).map_err(|e| bad(format!("config: {e}")))?;
    let status = InstanceStatus::parse(&status_text)
        .ok_or_else(|| bad(format!("status {status_text:?}")))?;
    let kind_text: String = row.get("kind")?;
    let kind = InstanceKind::parse(&kind_text).ok_or_else(|| bad(format!("kind {kind_text:?}")))?;
    let process = match (pid, pid_start) {
        (Some(pid), Some(start)) => Some(StoredProcess {
            pid,
            start_time: start as u64,
        }),
        _ => None,
    };
    Ok((
        Instance {
            name: row.get("name")?,
            image: row.get("image")?,
            kind,
            status,
            config,
            pid,
            restarts: row.get::<_, i64>("restarts")? as u32,
            created_at: row.get("created_at")?,
            last_exit: row.get("last_exit")?,
            console: None,
            disk: row.get("disk")?,
            address: row.get("address")?,
        },
        process,
    ))
}

fn image_from_row(row: &Row<'_>) -> rusqlite::Result<Image> {
    let rootfs: Option<String> = row.get("rootfs")?;
    Ok(Image {
        name: row.get("name")?,
        kind: if rootfs.is_some() {
            InstanceKind::Container
        } else {
            InstanceKind::Vm
        },
        kernel: row.get("kernel")?,
        rootfs,
        initrd: row.get("initrd")?,
        disk: row.get("disk")?,
        cmdline: row.get("cmdline")?,
        size_bytes: row.get::<_, i64>("size_bytes")? as u64,
        created_at: row.get("created_at")?,
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl Db {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Self> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(DaemonError::Corrupt(format!(
                "database schema {version} is newer than this daemon's {SCHEMA_VERSION}"
            )));
        }
        conn.execute_batch(SCHEMA)?;
        for (table, column, decl) in ADDED_COLUMNS {
            let present: bool = conn.query_row(
                &format!("SELECT COUNT(*) FROM pragma_table_info('{table}') WHERE name = ?1"),
                [column],
                |r| r.get::<_, i64>(0).map(|n| n > 0),
            )?;
            if !present {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
                if column == "stateful" {
                    // A container's snapshot never held memory.
                    conn.execute_batch(
                        "UPDATE snapshots SET stateful = 0 WHERE instance IN
                            (SELECT name FROM instances WHERE kind = 'container')",
                    )?;
                }
            }
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Db { conn })
    }

    // ---- instances ----

    /// Inserts a new instance; a taken name is a conflict.
    pub fn insert_instance(&mut self, inst: &Instance) -> Result<()> {
        let config =
            serde_json::to_string(&inst.config).map_err(|e| DaemonError::Corrupt(e.to_string()))?;
        let r = self.conn.execute(
            "INSERT INTO instances (name, image, config, status, restarts, created_at, disk,
                kind, address)
             VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8)",
            params![
                inst.name,
                inst.image,
                config,
                inst.status.as_str(),
                inst.created_at,
                inst.disk,
                inst.kind.as_str(),
                inst.address
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(DaemonError::Conflict(format!(
                "instance '{}' already exists",
                inst.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub fn instance(&self, name: &str) -> Result<(Instance, Option<StoredProcess>)> {
        self.conn
            .query_row(
                "SELECT * FROM instances WHERE name = ?1",
                [name],
                instance_from_row,
            )
            .optional()?
            .ok_or_else(|| DaemonError::not_found("instance", name))
    }

    pub fn instances(&self) -> Result<Vec<(Instance, Option<StoredProcess>)>> {
        let mut stmt = self.conn.prepare("SELECT * FROM instances ORDER BY name")?;
        let rows = stmt.query_map([], instance_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn set_config(&mut self, name: &str, config: &InstanceConfig) -> Result<()> {
        let text =
            serde_json::to_string(config).map_err(|e| DaemonError::Corrupt(e.to_string()))?;
        self.update(
            name,
            "UPDATE instances SET config = ?2 WHERE name = ?1",
            &text,
        )
    }

    /// Records a started process.
    pub fn set_running(
        &mut self,
        name: &str,
        status: InstanceStatus,
        p: StoredProcess,
    ) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE instances SET status = ?2, pid = ?3, pid_start = ?4 WHERE name = ?1",
            params![name, status.as_str(), p.pid, p.start_time as i64],
        )?;
        Self::one(n, name)
    }

    /// Records a status without a process (stopped, error).
    pub fn set_stopped(
        &mut self,
        name: &str,
        status: InstanceStatus,
        last_exit: Option<&str>,
    ) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE instances SET status = ?2, pid = NULL, pid_start = NULL,
                last_exit = COALESCE(?3, last_exit) WHERE name = ?1",
            params![name, status.as_str(), last_exit],
        )?;
        Self::one(n, name)
    }

    pub fn set_status(&mut self, name: &str, status: InstanceStatus) -> Result<()> {
        self.update(
            name,
            "UPDATE instances SET status = ?2 WHERE name = ?1",
            status.as_str(),
        )
    }

    /// Sets the restart counter.
    pub fn set_restarts(&mut self, name: &str, restarts: u32) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE instances SET restarts = ?2 WHERE name = ?1",
            params![name, i64::from(restarts)],
        )?;
        Self::one(n, name)
    }

    pub fn delete_instance(&mut self, name: &str) -> Result<()> {
        let n = self
            .conn
            .execute("DELETE FROM instances WHERE name = ?1", [name])?;
        Self::one(n, name)
    }

    fn update(&mut self, name: &str, sql: &str, value: &str) -> Result<()> {
        let n = self.conn.execute(sql, params![name, value])?;
        Self::one(n, name)
    }

    fn one(n: usize, name: &str) -> Result<()> {
        if n == 0 {
            Err(DaemonError::not_found("instance", name))
        } else {
            Ok(())
        }
    }

    // ---- images ----

    pub fn insert_image(&mut self, img: &Image) -> Result<()> {
        let r = self.conn.execute(
            "INSERT INTO images (name, kernel, initrd, disk, cmdline, size_bytes, created_at,
                rootfs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                img.name,
                img.kernel,
                img.initrd,
                img.disk,
                img.cmdline,
                img.size_bytes as i64,
                img.created_at,
                img.rootfs
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(DaemonError::Conflict(format!(
                "image '{}' already exists",
                img.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub fn image(&self, name: &str) -> Result<Image> {
        self.conn
            .query_row(
                "SELECT * FROM images WHERE name = ?1",
                [name],
                image_from_row,
            )
            .optional()?
            .ok_or_else(|| DaemonError::not_found("image", name))
    }

    pub fn images(&self) -> Result<Vec<Image>> {
        let mut stmt = self.conn.prepare("SELECT * FROM images ORDER BY name")?;
        let rows = stmt.query_map([], image_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Deletes an image no instance uses.
    pub fn delete_image(&mut self, name: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        let users: i64 = tx.query_row(
            "SELECT COUNT(*) FROM instances WHERE image = ?1",
            [name],
            |r| r.get(0),
        )?;
        if users > 0 {
            return Err(DaemonError::Conflict(format!(
                "image '{name}' is used by {users} instance(s)"
            )));
        }
        let n = tx.execute("DELETE FROM images WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(DaemonError::not_found("image", name));
        }
        tx.commit()?;
        Ok(())
    }

    // ---- networks ----

    pub fn insert_network(&mut self, net: &Network) -> Result<()> {
        let r = self.conn.execute(
            "INSERT INTO networks (name, bridge, address, nat) VALUES (?1, ?2, ?3, ?4)",
            params![net.name, net.bridge, net.address, net.nat],
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(DaemonError::Conflict(format!(
                "network '{}' already exists",
                net.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub fn networks(&self) -> Result<Vec<Network>> {
        let mut stmt = self.conn.prepare("SELECT * FROM networks ORDER BY name")?;
        let rows = stmt.query_map([], |row| {
            Ok(Network {
                name: row.get("name")?,
                bridge: row.get("bridge")?,
                address: row.get("address")?,
                nat: row.get("nat")?,
                active: false,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn delete_network(&mut self, name: &str) -> Result<()> {
        let n = self
            .conn
            .execute("DELETE FROM networks WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(DaemonError::not_found("network", name));
        }
        Ok(())
    }

    // ---- snapshots ----

    pub fn insert_snapshot(&mut self, instance: &str, snap: &StoredSnapshot) -> Result<()> {
        let r = self.conn.execute(
            "INSERT INTO snapshots (instance, name, created_at, stateful, layer, complete)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                instance,
                snap.name,
                snap.created_at,
                snap.stateful,
                snap.layer,
                snap.complete
            ],
        );
        match r {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(DaemonError::Conflict(format!(
                "snapshot '{}' of '{instance}' already exists",
                snap.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// An instance's snapshots, oldest first.
    pub fn snapshots(&self, instance: &str) -> Result<Vec<StoredSnapshot>> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM snapshots WHERE instance = ?1 ORDER BY created_at, name")?;
        let rows = stmt.query_map([instance], snapshot_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// One snapshot of an instance.
    pub fn snapshot(&self, instance: &str, name: &str) -> Result<StoredSnapshot> {
        self.conn
            .query_row(
                "SELECT * FROM snapshots WHERE instance = ?1 AND name = ?2",
                [instance, name],
                snapshot_from_row,
            )
            .optional()?
            .ok_or_else(|| DaemonError::not_found("snapshot", name))
    }

    /// Marks a snapshot taken to the end.
    pub fn set_snapshot_complete(&mut self, instance: &str, name: &str) -> Result<()> {
        let n = self.conn.execute(
            "UPDATE snapshots SET complete = 1 WHERE instance = ?1 AND name = ?2",
            params![instance, name],
        )?;
        if n == 0 {
            return Err(DaemonError::not_found("snapshot", name));
        }
        Ok(())
    }

    /// (instance, snapshot) of every snapshot not taken to the end.
    pub fn incomplete_snapshots(&self) -> Result<Vec<(String, StoredSnapshot)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT * FROM snapshots WHERE complete = 0 ORDER BY instance, name")?;
        let rows = stmt.query_map([], |r| Ok((r.get("instance")?, snapshot_from_row(r)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// (instance, snapshot, layer) of every snapshot that holds a disk layer.
    pub fn snapshot_layers(&self) -> Result<Vec<(String, String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT instance, name, layer FROM snapshots WHERE layer IS NOT NULL
             ORDER BY instance, name",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn delete_snapshot(&mut self, instance: &str, name: &str) -> Result<()> {
        let n = self.conn.execute(
            "DELETE FROM snapshots WHERE instance = ?1 AND name = ?2",
            params![instance, name],
        )?;
        if n == 0 {
            return Err(DaemonError::not_found("snapshot", name));
        }
        Ok(())
    }

    // ---- events ----

    /// Appends an event and returns it with its id and time.
    pub fn add_event(&mut self, kind: &str, instance: Option<&str>, detail: &str) -> Result<Event> {
        let time_ms = now_ms();
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO events (time_ms, kind, instance, detail) VALUES (?1, ?2, ?3, ?4)",
            params![time_ms, kind, instance, detail],
        )?;
        let id = tx.last_insert_rowid();
        if id % 1000 == 0 {
            tx.execute("DELETE FROM events WHERE id <= ?1", [id - MAX_EVENTS])?;
        }
        tx.commit()?;
        Ok(Event {
            id,
            time_ms,
            kind: kind.to_string(),
            instance: instance.map(str::to_string),
            detail: detail.to_string(),
        })
    }

    /// Events after `since` (oldest first), at most `limit`.
    pub fn events(&self, since: i64, limit: i64) -> Result<Vec<Event>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, time_ms, kind, instance, detail FROM events WHERE id > ?1
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![since, limit], |r| {
            Ok(Event {
                id: r.get(0)?,
                time_ms: r.get(1)?,
                kind: r.get(2)?,
                instance: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        let mut v = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        v.reverse();
        Ok(v)
    }
}

/// Parses a restart policy stored or sent as text.
pub fn parse_policy(s: &str) -> Result<RestartPolicy> {
    RestartPolicy::parse(s).ok_or_else(|| {
        DaemonError::BadRequest(format!(
            "invalid restart policy {s:?}: expected no, on-failure or always"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str) -> Instance {
        let config = InstanceConfig {
            restart: RestartPolicy::OnFailure,
            cpu_weight: Some(200),
            ..crate::test_util::config()
        };
        Instance {
            created_at: 1,
            ..crate::test_util::instance(name, "img", config)
        }
    }

    #[test]
    fn instance_round_trip_and_duplicate() {
        let mut db = Db::open_in_memory().unwrap();
        db.insert_instance(&instance("a")).unwrap();
        let e = db.insert_instance(&instance("a")).unwrap_err();
        assert_eq!(e.status(), 409);
        let (got, proc_) = db.instance("a").unwrap();
        assert_eq!(got, instance("a"));
        assert_eq!(proc_, None);
        db.set_running(
            "a",
            InstanceStatus::Running,
            StoredProcess {
                pid: 42,
                start_time: 7,
            },
        )
        .unwrap();
        let (got, proc_) = db.instance("a").unwrap();
        assert_eq!(got.status, InstanceStatus::Running);
        assert_eq!(proc_.map(|p| (p.pid, p.start_time)), Some((42, 7)));
        db.set_stopped("a", InstanceStatus::Error, Some("signal 9"))
            .unwrap();
        let (got, _) = db.instance("a").unwrap();
        assert_eq!(
            (got.pid, got.last_exit.as_deref()),
            (None, Some("signal 9"))
        );
        db.delete_instance("a").unwrap();
        assert_eq!(db.instance("a").unwrap_err().status(), 404);
    }

    #[test]
    fn image_in_use_cannot_be_deleted() {
        let mut db = Db::open_in_memory().unwrap();
        let img = Image {
            name: "img".into(),
            kind: Default::default(),
            kernel: "/k".into(),
            rootfs: None,
            initrd: None,
            disk: None,
            cmdline: String::new(),
            size_bytes: 1,
            created_at: 0,
        };
        db.insert_image(&img).unwrap();
        assert_eq!(db.insert_image(&img).unwrap_err().status(), 409);
        db.insert_instance(&instance("a")).unwrap();
        assert_eq!(db.delete_image("img").unwrap_err().status(), 409);
        db.delete_instance("a").unwrap();
        db.delete_image("img").unwrap();
        assert!(db.images().unwrap().is_empty());
    }

    #[test]
    fn a_database_from_before_containers_gains_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            let mut old = SCHEMA.replace(
                ",\n    kind TEXT NOT NULL DEFAULT 'vm',\n    address TEXT",
                "",
            );
            old = old.replace(",\n    rootfs TEXT", "");
            old = old.replace(
                "\n    stateful INTEGER NOT NULL DEFAULT 1,\n    layer TEXT,",
                "",
            );
            assert!(!old.contains("stateful"));
            assert!(!old.contains("rootfs") && !old.contains("DEFAULT 'vm'"));
            conn.execute_batch(&old).unwrap();
            conn.execute(
                "INSERT INTO instances (name, image, config, status, created_at)
                 VALUES ('a', 'img', ?1, 'stopped', 1)",
                [serde_json::to_string(&instance("a").config).unwrap()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO snapshots (instance, name, created_at) VALUES ('a', 'old', 1)",
                [],
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let mut db = Db::open(&path).unwrap();
        let (got, _) = db.instance("a").unwrap();
        assert_eq!((got.kind, got.address), (InstanceKind::Vm, None));
        // a VM's snapshot from before disk layers: memory and state, no layer
        let old = db.snapshot("a", "old").unwrap();
        assert!(
            old.stateful && old.complete && old.layer.is_none(),
            "{old:?}"
        );
        let mut snap = StoredSnapshot {
            name: "s".into(),
            created_at: 2,
            stateful: false,
            layer: Some("/l/a.qcow2".into()),
            complete: false,
        };
        db.insert_snapshot("a", &snap).unwrap();
        assert_eq!(db.snapshot("a", "s").unwrap(), snap);
        assert_eq!(
            db.incomplete_snapshots().unwrap(),
            [("a".into(), snap.clone())]
        );
        db.set_snapshot_complete("a", "s").unwrap();
        snap.complete = true;
        assert_eq!(db.snapshot("a", "s").unwrap(), snap);
        assert!(db.incomplete_snapshots().unwrap().is_empty());
        assert_eq!(
            db.snapshot_layers().unwrap(),
            [("a".into(), "s".into(), "/l/a.qcow2".into())]
        );
        assert_eq!(db.insert_snapshot("a", &snap).unwrap_err().status(), 409);
        assert_eq!(db.snapshot("a", "t").unwrap_err().status(), 404);
        let mut c = instance("c");
        c.kind = InstanceKind::Container;
        c.address = Some("10.0.0.9/24".into());
        db.insert_instance(&c).unwrap();
        assert_eq!(db.instance("c").unwrap().0, c);
        drop(db);
        // Opening again changes nothing.
        assert_eq!(Db::open(&path).unwrap().instance("c").unwrap().0, c);
    }

    #[test]
    fn container_snapshots_from_before_disk_layers_are_not_stateful() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = Connection::open(&path).unwrap();
            let old = SCHEMA.replace(
                "\n    stateful INTEGER NOT NULL DEFAULT 1,\n    layer TEXT,",
                "",
            );
            conn.execute_batch(&old).unwrap();
            for (name, kind) in [("vm", "vm"), ("ct", "container")] {
                conn.execute(
                    "INSERT INTO instances (name, image, config, status, created_at, kind)
                     VALUES (?1, 'img', ?2, 'stopped', 1, ?3)",
                    params![
                        name,
                        serde_json::to_string(&instance(name).config).unwrap(),
                        kind
                    ],
                )
                .unwrap();
                conn.execute(
                    "INSERT INTO snapshots (instance, name, created_at) VALUES (?1, 's', 1)",
                    [name],
                )
                .unwrap();
            }
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert!(db.snapshot("vm", "s").unwrap().stateful);
        assert!(!db.snapshot("ct", "s").unwrap().stateful);
    }

    #[test]
    fn events_in_order() {
        let mut db = Db::open_in_memory().unwrap();
        for i in 0..5 {
            db.add_event("k", Some("a"), &i.to_string()).unwrap();
        }
        let ev = db.events(2, 100).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.detail.as_str()).collect::<Vec<_>>(),
            ["2", "3", "4"]
        );
        assert_eq!(db.events(0, 2).unwrap().len(), 2);
    }

    #[test]
    fn reopening_keeps_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let mut db = Db::open(&path).unwrap();
            db.insert_instance(&instance("keep")).unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.instances().unwrap().len(), 1);
    }
}
