//! Writing: a `Write` applied in one `BEGIN IMMEDIATE` transaction, with the
//! change rows it recorded when change capture is installed.

use super::*;
use crate::cutover::marker::{self, MarkerWatch};

pub(super) fn exec_steps(conn: &Connection, layout: &Layout, steps: &[Step]) -> Result<()> {
    for step in steps {
        match step {
            // The search index lives only in Supabase; DoX's SQLite methods are no-ops.
            Step::Upsert { table, .. }
            | Step::DeleteAll { table }
            | Step::DeleteWhere { table, .. }
                if table.sqlite == cat::SEARCH_CHUNKS.sqlite => {}
            Step::Upsert { table, rows } => {
                let l = layout.writable(table)?;
                let sql = l.upsert.as_deref().expect("writable layout has an upsert");
                let mut stmt = conn.prepare_cached(sql)?;
                for row in rows {
                    if let SqlValue::Null = row[0] {
                        return Err(Error::invalid(format!(
                            "{}: the key is missing",
                            table.sqlite
                        )));
                    }
                    stmt.execute(params_from_iter(row.iter().map(to_param)))?;
                }
            }
            Step::DeleteWhere {
                table,
                column,
                value,
            } => {
                if let Some(l) = layout.get(table) {
                    let idx = table.index_of(column);
                    if let Some(p) = &l.physical[idx] {
                        conn.prepare_cached(&format!(
                            "DELETE FROM {} WHERE {} = ?",
                            quote(table.sqlite),
                            quote(p)
                        ))?
                        .execute([value])?;
                    }
                }
            }
            Step::DeleteAll { table } => {
                if layout.get(table).is_some() {
                    conn.execute(&format!("DELETE FROM {}", quote(table.sqlite)), [])?;
                }
            }
        }
    }
    Ok(())
}

pub(super) fn one_row(
    conn: &Connection,
    layout: &Layout,
    t: &'static Table,
    column: &'static str,
    value: &str,
) -> Result<Option<SqlRow>> {
    let Some(l) = layout.get(t) else {
        return Ok(None);
    };
    Ok(read_rows(conn, t, l, &[(column, json!(value))])?
        .into_iter()
        .next())
}

/// Every write transaction takes the write lock at `BEGIN` (`IMMEDIATE`). A
/// DEFERRED one that reads first (`set_user_pref`, `register_skill`) and then
/// writes fails at once with `SQLITE_BUSY_SNAPSHOT` ("database is locked",
/// no busy wait) when the app committed in between; `BEGIN IMMEDIATE` waits
/// for the busy timeout instead.
pub(super) fn write_transaction(
    conn: &mut Connection,
) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// Whose write it is, which decides what the recorded primary
/// (`_dualwrite_primary`) means for it.
pub(super) enum Role<'a> {
    /// The app's, as DoX's own: after cutover the refusal triggers fail it.
    App,
    /// The app's, through a dual layer that follows the recorded primary: the
    /// marker is read once the write lock is held, and a file that is no
    /// longer the primary gets nothing (the write goes to Supabase).
    Following(&'a mut MarkerWatch),
    /// A copy of Supabase's row (the file is the mirror): written past the
    /// refusal triggers ([`marker::write_as_mirror`]).
    Mirror,
}

/// Apply a write in one transaction. With `with_capture`, also returns
/// whether the file's change log has it (capture installed, and the write is
/// on tables the file holds: the search index lives in Supabase only), read
/// in the write's own transaction. `Err(write)` (the write as given): the
/// file is no longer the primary ([`Role::Following`]), nothing was written.
pub(super) fn apply_sync(
    conn: &mut Connection,
    layout: &Layout,
    mut write: Write,
    with_capture: bool,
    shape: &mut crate::capture::LogShape,
    role: Role<'_>,
) -> Result<std::result::Result<(Applied, bool), Write>> {
    write.prepare();
    let tx = write_transaction(conn)?;
    let mirror = matches!(role, Role::Mirror);
    let following = match role {
        Role::Following(watch) => {
            // Inside the transaction, with the write lock held: a switch that
            // committed while this write waited on the fence is seen here.
            if watch.current(&tx)?.primary != marker::Primary::Sqlite {
                return Ok(Err(write));
            }
            true
        }
        _ => false,
    };
    let captured = with_capture
        && write.table() != cat::SEARCH_CHUNKS.sqlite
        && crate::capture::log_present(&tx, shape)?;
    // Resolving changes a read-modify-write: kept as given, for Supabase.
    let given = (following && write.current_row().is_some()).then(|| write.clone());
    let value = if mirror {
        marker::write_as_mirror(&tx, |c| write_rows(c, layout, &mut write))
    } else {
        write_rows(&tx, layout, &mut write)
    };
    let value = match value {
        // The backstop: a refusal trigger failed what the check let through.
        Err(e) if following && marker::is_refusal(&e) => {
            return Ok(Err(given.unwrap_or(write)));
        }
        v => v?,
    };
    tx.commit()?;
    Ok(Ok((
        Applied {
            value,
            resolved: write,
        },
        captured,
    )))
}

/// A write's rows, in the caller's transaction: a read-modify-write reads
/// its row there and resolves on it. Returns the method's value.
fn write_rows(tx: &Connection, layout: &Layout, write: &mut Write) -> Result<Value> {
    let current = match write.current_row() {
        Some((t, column, key)) => {
            let key = key.to_owned();
            one_row(tx, layout, t, column, &key)?
        }
        None => None,
    };
    if let Some((t, ..)) = write.current_row() {
        write.resolve(current.as_ref().map(|r| lenient_canonical(t, r)).as_ref());
    }
    let value = match write {
        Write::RegisterSkill {
            name,
            description,
            parameters,
            workflow_def,
            enabled,
            id,
            created_at,
        } => {
            let t = &cat::SKILLS_REGISTRY;
            let l = layout.writable(t)?;
            // DoX keeps the id and created_at of a skill registered again under
            // the same name (`resolve` took them from `existing`).
            if let Some(existing) = &current {
                let p = |c: &str| quote(l.physical[t.index_of(c)].as_deref().unwrap_or(c));
                tx.execute(
                    &format!(
                        "UPDATE {} SET {} = ?, {} = ?, {} = ?, {} = ? WHERE {} = ?",
                        quote(t.sqlite),
                        p("description"),
                        p("parameters_json"),
                        p("workflow_def_json"),
                        p("enabled"),
                        p("id")
                    ),
                    rusqlite::params![
                        description.as_str(),
                        json_text(parameters),
                        json_text(workflow_def),
                        i64::from(*enabled),
                        to_param(&existing[0]),
                    ],
                )?;
            } else {
                let row = skill_row(
                    id.as_ref(),
                    name,
                    description,
                    parameters,
                    workflow_def,
                    *enabled,
                    created_at.as_ref(),
                );
                exec_steps(
                    tx,
                    layout,
                    &[Step::Upsert {
                        table: t,
                        rows: vec![row],
                    }],
                )?;
            }
            json!(id)
        }
        Write::UpdateSkill { skill_id, enabled } => {
            let t = &cat::SKILLS_REGISTRY;
            let l = layout.writable(t)?;
            let p = |c: &str| quote(l.physical[t.index_of(c)].as_deref().unwrap_or(c));
            tx.execute(
                &format!(
                    "UPDATE {} SET {} = ? WHERE {} = ?",
                    quote(t.sqlite),
                    p("enabled"),
                    p("id")
                ),
                rusqlite::params![i64::from(*enabled), skill_id.as_str()],
            )?;
            match one_row(tx, layout, t, "id", skill_id)? {
                Some(row) => reads::skill(&lenient_canonical(t, &row)),
                None => Value::Null,
            }
        }
        Write::UpdateArtifact {
            artifact_id,
            fields,
            ..
        } => {
            write_validate_fields(fields)?;
            let t = &cat::ARTIFACT;
            let l = layout.writable(t)?;
            match &current {
                // DoX silently ignores an update of a missing artifact.
                None => Value::Null,
                Some(_) => {
                    let mut sets = Vec::new();
                    let mut params = Vec::new();
                    for (k, v) in fields.iter() {
                        let col = if k == "extras" {
                            "extra_json"
                        } else {
                            k.as_str()
                        };
                        let idx = t.index_of(col);
                        let phys = l.physical[idx].as_deref().unwrap_or(col);
                        sets.push(format!("{} = ?", quote(phys)));
                        params.push(match (k.as_str(), v) {
                            (_, Value::Null) => SqlParam::Null,
                            ("extras", v) => SqlParam::Text(json_text(v)),
                            (_, Value::String(s)) => SqlParam::Text(s.clone()),
                            (_, v) => SqlParam::Text(json_text(v)),
                        });
                    }
                    if !sets.is_empty() {
                        params.push(SqlParam::Text(artifact_id.clone()));
                        tx.execute(
                            &format!(
                                "UPDATE {} SET {} WHERE {} = ?",
                                quote(t.sqlite),
                                sets.join(", "),
                                quote(l.physical[0].as_deref().unwrap_or("id"))
                            ),
                            params_from_iter(params),
                        )?;
                    }
                    Value::Null
                }
            }
        }
        other => {
            let steps = other
                .steps()
                .expect("every other write maps onto table steps");
            exec_steps(tx, layout, &steps)?;
            other.return_value()
        }
    };
    Ok(value)
}

pub(super) fn write_validate_fields(fields: &Map<String, Value>) -> Result<()> {
    Write::UpdateArtifact {
        artifact_id: String::new(),
        fields: fields.clone(),
        merge_extras: true,
    }
    .validate()
}
