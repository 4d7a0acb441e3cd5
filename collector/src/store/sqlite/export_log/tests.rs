//! The log's trim: a large backlog that every cursor has passed is not
//! deleted by the merger's commit (the trigger only copies), and the
//! export task's trim takes it away in pieces of at most [`TRIM_ROWS`].

#![allow(clippy::unwrap_used)]

use rusqlite::params;

use super::SqliteLog;
use crate::model::StoredValue;
use crate::store::export::TRIM_ROWS;
use crate::store::sqlite::tests::TempDb;

fn log_rows(db: &TempDb) -> i64 {
    db.conn
        .query_row("SELECT COUNT(*) FROM export_log", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_cursor_jump_past_a_large_backlog_is_trimmed_in_pieces_not_by_the_commit() {
    let mut db = TempDb::new("export-trim");
    db.series(1, "a", "d", "m", "{}");
    let log = SqliteLog::setup(&db.path, &["x".to_owned()]).unwrap();
    // A backlog of 5.5 pieces, as a destination down for a while leaves.
    let backlog = TRIM_ROWS * 11 / 2;
    for i in 0..backlog {
        db.reading(1, 1_000 + i, StoredValue::F64(i as f64));
    }
    assert_eq!(log_rows(&db), backlog);
    // The cursor jumps to the end (a `max_lag` skip), then the merger
    // commits once more: the commit copies its batch and deletes nothing.
    let conn = log.connect().unwrap();
    let mut cursor = log.cursor(&conn, "x").unwrap();
    let end: i64 = db
        .conn
        .query_row("SELECT MAX(id) FROM export_log", [], |r| r.get(0))
        .unwrap();
    cursor.position = end;
    log.save(&conn, &cursor).unwrap();
    db.reading(1, 1_000_000, StoredValue::F64(-1.0));
    assert_eq!(log_rows(&db), backlog + 1, "the commit trimmed the log");
    // Each trim takes one bounded piece, oldest first; the row after the
    // cursor stays.
    let mut pieces = Vec::new();
    loop {
        let n = log.trim(&conn).unwrap();
        pieces.push(n);
        if n < TRIM_ROWS as u64 {
            break;
        }
    }
    let full = (backlog / TRIM_ROWS) as usize;
    assert_eq!(pieces.len(), full + 1, "pieces: {pieces:?}");
    assert!(pieces[..full].iter().all(|&n| n == TRIM_ROWS as u64));
    assert_eq!(pieces[full], (backlog % TRIM_ROWS) as u64);
    let left: Vec<i64> = {
        let mut stmt = db.conn.prepare("SELECT id FROM export_log").unwrap();
        stmt.query_map(params![], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(left, vec![end + 1]);
    assert_eq!(log.trim(&conn).unwrap(), 0);
}

#[test]
fn an_old_trimming_trigger_is_replaced_when_the_log_is_set_up() {
    let db = TempDb::new("export-old-trigger");
    // The trigger as the first release created it.
    db.conn
        .execute_batch(
            "CREATE TABLE export_log (id INTEGER PRIMARY KEY AUTOINCREMENT, \
               received_ns INTEGER NOT NULL, count INTEGER NOT NULL, data BLOB NOT NULL); \
             CREATE TABLE export_cursors (name TEXT PRIMARY KEY, position INTEGER NOT NULL, \
               inflight INTEGER NOT NULL DEFAULT 0, sent INTEGER NOT NULL DEFAULT 0, \
               dropped INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0, \
               retried INTEGER NOT NULL DEFAULT 0, last_error TEXT) WITHOUT ROWID; \
             CREATE TRIGGER export_log_append AFTER INSERT ON head BEGIN \
               INSERT INTO export_log (received_ns, count, data) \
                 VALUES (NEW.received_ns, NEW.count, NEW.data); \
               DELETE FROM export_log WHERE id <= (SELECT MIN(position) FROM export_cursors); \
             END;",
        )
        .unwrap();
    SqliteLog::setup(&db.path, &["x".to_owned()]).unwrap();
    let sql: String = db
        .conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'export_log_append'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sql.contains("INSERT INTO export_log"), "{sql}");
    assert!(
        !sql.contains("DELETE"),
        "the old trimming trigger stayed: {sql}"
    );
}

/// A cursor removed by another collector's setup (started or reloaded
/// without the export) makes the holder's next save fail instead of
/// updating nothing: the trim no longer waits for that cursor.
#[test]
fn saving_a_cursor_another_setup_removed_fails() {
    let db = TempDb::new("export-removed-cursor");
    let log = SqliteLog::setup(&db.path, &["x".to_owned()]).unwrap();
    let conn = log.connect().unwrap();
    let mut cursor = log.cursor(&conn, "x").unwrap();
    cursor.sent = 7;
    log.save(&conn, &cursor).unwrap();
    assert_eq!(log.cursor(&conn, "x").unwrap().sent, 7);
    SqliteLog::setup(&db.path, &["y".to_owned()]).unwrap();
    match log.save(&conn, &cursor) {
        Err(crate::store::read::ReadError::CursorRemoved { name }) => assert_eq!(name, "x"),
        other => panic!("save of a removed cursor: {other:?}"),
    }
}
