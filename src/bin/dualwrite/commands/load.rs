//! `backfill`, `import` and `export`: bulk copies of a SQLite file.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use dualwrite::backfill::{self, BackfillOptions, BackfillReport, Progress, Start};
use dualwrite::db::Postgres;
use dualwrite::error::NOT_CONFIRMED;
use dualwrite::{catalogue, export, factory, Error};

use crate::args::{Cli, LoadArgs, COPY_BATCH_BYTES, COPY_BATCH_ROWS};
use crate::shell::{confirm, dox_source, policy, print_json, settings, state_dir_of, Usage};

impl LoadArgs {
    fn options(&self, source: &Path) -> Result<BackfillOptions> {
        let mut o = BackfillOptions::new(state_dir_of(self.state_dir.as_deref(), source));
        o.tables = catalogue::tables_named(&self.tables)?;
        o.dry_run = self.dry_run;
        o.concurrency = self.concurrency.max(1);
        let copy = self.via == "postgres";
        let (rows, bytes) = match copy {
            true => (COPY_BATCH_ROWS, COPY_BATCH_BYTES),
            false => (o.batch_rows, o.batch_bytes),
        };
        o.batch_rows = self.batch_rows.unwrap_or(rows).max(1);
        o.batch_bytes = self.batch_bytes.unwrap_or(bytes).max(1024);
        o.max_wait = Duration::try_from_secs_f64(self.max_wait_secs)
            .map_err(|_| Error::invalid("--max-wait-secs must be a positive number"))?;
        o.stale_guard = !self.no_stale_guard;
        o.progress = if self.output.json() {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            Progress::Bars
        } else {
            Progress::Lines
        };
        Ok(o)
    }
}

async fn load(
    cli: &Cli,
    args: &LoadArgs,
    source: &Path,
    from_sqlite: bool,
    run: impl AsyncFnOnce(
        &dualwrite::db::SupabaseDatabase,
        &BackfillOptions,
    ) -> dualwrite::Result<BackfillReport>,
) -> Result<ExitCode> {
    let mut opts = args.options(source)?;
    let missing_tables = if from_sqlite {
        dox_source(source, args.allow_missing_tables).await?
    } else {
        Vec::new()
    };
    let s = settings(cli)?;
    opts.unrepresentable = policy(args.unrepresentable.as_deref(), &s)?;
    if args.via == "postgres" && !args.dry_run {
        // A login refused is a setting to fix (exit 2); an unreachable host, exit 1.
        let url = s.supabase.db_url.as_ref().ok_or_else(|| {
            Usage(Error::invalid(
                "--via postgres needs the database connection string in SUPABASE_DB_URL \
                 (or DATABASE_URL): on a hosted project, Connect > Connection string, direct \
                 or the pooler in session mode",
            ))
        })?;
        let pg = Postgres::connect(url).await.map_err(|e| match e {
            Error::Config(_) => anyhow::Error::from(Usage(e)),
            e => e.into(),
        })?;
        opts.postgres = Some(pg);
    }
    // Copies of the file's rows: capture on Supabase does not log them.
    let target = factory::connect_supabase(&s).await?.mirroring_sqlite();
    let start = match (args.reset, args.restart) {
        (true, _) => Start::Reset,
        (false, true) => Start::Restart,
        (false, false) => Start::Resume,
    };
    if start == Start::Reset && !args.dry_run {
        let what = format!(
            "--reset deletes every row of {} table(s) in {}",
            opts.selected().len(),
            match &opts.postgres {
                Some(pg) => pg.shown().to_owned(),
                None => target.rest().url().to_owned(),
            }
        );
        if confirm(&what, args.yes)?.is_none() {
            return Err(Error::invalid(format!("{what}: {NOT_CONFIRMED}")).into());
        }
    }
    backfill::prepare(&target, &opts, start).await?;
    if from_sqlite {
        // One project per deployment: another's rows are named before anything is written.
        let collisions = backfill::unique_collisions(source, &target, &opts.selected()).await?;
        backfill::refuse_collisions(&collisions, target.rest().url())?;
    }
    let mut report = run(&target, &opts).await?;
    report.missing_tables = missing_tables;
    if args.output.json() {
        print_json(&serde_json::to_value(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(if report.rows_rejected > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// `backfill`: copy every table of a SQLite file into Supabase.
pub async fn backfill(cli: &Cli, from_sqlite: &Path, args: &LoadArgs) -> Result<ExitCode> {
    load(cli, args, from_sqlite, true, async |t, o| {
        backfill::run(from_sqlite, t, o).await
    })
    .await
}

/// `import`: load an export directory into Supabase.
pub async fn import(cli: &Cli, dir: &Path, args: &LoadArgs) -> Result<ExitCode> {
    load(cli, args, dir, false, async |t, o| {
        export::import(dir, t, o).await
    })
    .await
}

/// `export`: every table as NDJSON with a manifest; exit 3 when rows were rejected.
pub async fn export(
    cli: &Cli,
    from_sqlite: &Path,
    out: &Path,
    (compress, allow_missing_tables): (bool, bool),
    names: &[String],
    unrepresentable: Option<&str>,
) -> Result<ExitCode> {
    let tables = catalogue::tables_named(names)?;
    dox_source(from_sqlite, allow_missing_tables).await?;
    let p = match unrepresentable {
        Some(p) => p.parse()?,
        None => settings(cli)?.unrepresentable,
    };
    let m = export::export_with(from_sqlite, out, &tables, compress, p).await?;
    print_json(&serde_json::to_value(&m)?);
    if m.rejected_rows > 0 {
        eprintln!(
            "{} rows could not be exported; each is in {}",
            m.rejected_rows,
            out.join("rejects.ndjson").display()
        );
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}
