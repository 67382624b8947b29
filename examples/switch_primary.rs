//! Play the switch of `cutover run` (or `rollback`) on a DoX file, without its
//! drain and verification: for tests and drills of an app that embeds
//! dualwrite, until `dualwrite cutover run` lands.
//!
//! ```text
//! switch_primary supabase|sqlite [--hold-ms N] [--keep-capture]
//! ```
//!
//! It takes the file's fence (`BEGIN IMMEDIATE`: the app's writes wait),
//! holds it N ms (default 1000), sets Supabase's side (to `supabase`: capture
//! on Supabase on, access `primary`; to `sqlite`: access `mirror` and capture
//! off, unless `--keep-capture`), then commits the recorded primary. The file
//! and Supabase come from the usual settings (`DB_PATH`, `SUPABASE_URL`, the
//! service key, `.env`). It prints `taken <epoch seconds>` once it holds the
//! fence and `committed <epoch seconds>` after the commit.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use dualwrite::access::{access, AccessState};
use dualwrite::capture::supabase as supabase_capture;
use dualwrite::config::{Settings, Sources};
use dualwrite::cutover::marker::{Fence, Primary};
use dualwrite::db::RestClient;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: switch_primary supabase|sqlite [--hold-ms N] [--keep-capture]";
    let to = Primary::parse(args.first().context(usage)?)?;
    let mut hold = Duration::from_millis(1000);
    let mut keep_capture = false;
    let mut rest_args = args[1..].iter();
    while let Some(a) = rest_args.next() {
        match a.as_str() {
            "--hold-ms" => {
                let n = rest_args.next().context(usage)?;
                hold = Duration::from_millis(n.parse().context("--hold-ms takes milliseconds")?);
            }
            "--keep-capture" => keep_capture = true,
            other => bail!("unknown argument {other}; {usage}"),
        }
    }
    let settings = Settings::load(&Sources::from_process())?;
    let rest = RestClient::new(&settings.rest_config()?)?;

    let fence = Fence::take(&settings.db_path)?;
    println!("taken {:.6}", now());
    tokio::time::sleep(hold).await;
    match to {
        Primary::Supabase => {
            supabase_capture::enable(&rest).await?;
            access(&rest, Some(AccessState::Primary)).await?;
        }
        Primary::Sqlite => {
            access(&rest, Some(AccessState::Mirror)).await?;
            if !keep_capture {
                supabase_capture::disable(&rest, true).await?;
            }
        }
    }
    fence.commit(to)?;
    println!("committed {:.6}", now());
    Ok(())
}
